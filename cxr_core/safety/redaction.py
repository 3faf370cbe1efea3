"""Burned-in text found on intake, and blacked out before readers see the film (issue 15).

Films often carry the patient's name, birth date or record number burned into the pixels, where
de-identifying the DICOM header does not reach. :func:`text_boxes` finds them with
:func:`cxr_core.safety.markers.detect_markers` (its ``"text"`` words; single glyphs such as the "L"/"R"
side markers and flat boxes are left alone: they identify nobody and readers need the side); an
administrator then chooses to :func:`redact` the film: black boxes over the text, padded a little.

Which hash identifies the film
------------------------------
The redacted pixels are what gets stored, shown, scored and exported, so a redacted film is stored under
the SHA-256 of its *redacted* pixels (:func:`cxr_core.io.imaging.pixel_sha256`), like any other film: queues,
galleries, model results and exports all use that one hash and never see the original pixels. The
original's hash is kept in the ``redactions`` table (migration 0006) and in the audit trail's detail. The
blind gate (:func:`cxr_core.safety.blinding.model_output_decision`) matches a film's hash against pending
films *and* their ``source_sha``: someone loading the unredacted original on the review page while the
redacted film is pending is recognised by exact hash. The near-copy check cannot be relied on for this:
black boxes over two lines of text move the perceptual hash of the reduced film too far (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cxr_core.safety.markers import detect_markers

Box = tuple[int, int, int, int]  # (row0, col0, row1, col1), end exclusive
#: Pixels added around each detected text box before it is blacked out (antialiased glyph edges).
PAD = 3
#: Each text line's box is widened by this many line heights on both sides (end glyphs the detector missed).
LINE_MARGIN = 2


def text_boxes(pixels: np.ndarray) -> tuple[Box, ...]:
    """Boxes of burned-in lines of text on ``(H, W)`` [0, 1] pixels, top to bottom; empty when there are none.

    The detector finds words, and sometimes only some glyphs of a long line (the others come back as lone
    ``"marker"`` glyphs); so each text line is one box from its leftmost to its rightmost glyph, taking in
    the lone glyphs whose rows overlap it. A lone glyph on a line without text (a side marker) is kept.
    """
    found = detect_markers(pixels)
    lines = [list(m.box) for m in found if m.kind == "text"]
    for m in found:
        if m.kind != "marker":
            continue
        for line in lines:
            if m.box[0] < line[2] and line[0] < m.box[2]:  # the rows overlap: the same line
                line[:] = [min(line[0], m.box[0]), min(line[1], m.box[1]),
                           max(line[2], m.box[2]), max(line[3], m.box[3])]
    rows, cols = np.shape(pixels)[:2]
    out = []
    for r0, c0, r1, c1 in lines:  # glyphs at a line's ends are the ones most often missed: two glyphs' margin
        margin = LINE_MARGIN * (r1 - r0)
        out.append((int(r0), int(max(0, c0 - margin)), int(r1), int(min(cols, c1 + margin))))
    return tuple(sorted(out))


def redact(pixels: np.ndarray, boxes: tuple[Box, ...] | list[Box], *, pad: int = PAD) -> np.ndarray:
    """A copy of ``pixels`` with each box (grown by ``pad``, clipped to the film) set to 0 (black).

    ``pixels`` is left untouched; boxes outside the film are ignored.
    """
    out = np.array(pixels, copy=True)
    rows, cols = out.shape[:2]
    for r0, c0, r1, c1 in boxes:
        r0, c0 = max(0, r0 - pad), max(0, c0 - pad)
        r1, c1 = min(rows, r1 + pad), min(cols, c1 + pad)
        if r0 < r1 and c0 < c1:
            out[r0:r1, c0:c1] = 0
    return out


#: Colour of the outlines drawn round detected text on a thumbnail (RGB): a red no film contains.
OUTLINE = (255, 48, 48)


def outline_boxes(thumb: np.ndarray, boxes: tuple[Box, ...] | list[Box], size: tuple[int, int], *,
                  colour: tuple[int, int, int] = OUTLINE) -> np.ndarray:
    """An RGB copy of a film's thumbnail with each text box outlined, so the administrator sees what would go.

    Parameters
    ----------
    thumb : (h, w) uint8 ndarray
        The film reduced (``cxr_core.safety.intake``'s thumbnail); left untouched.
    boxes : sequence of (row0, col0, row1, col1)
        Boxes in the *film's* pixels (:func:`text_boxes`), drawn grown by :data:`PAD` as :func:`redact` blacks them.
    size : (width, height)
        The film's size, to scale the boxes onto the thumbnail.

    Returns
    -------
    (h, w, 3) uint8 ndarray
        The thumbnail in grey with a one-pixel ``colour`` rectangle round each box (at least 2 pixels across).
    """
    out = np.repeat(np.asarray(thumb, np.uint8)[..., None], 3, axis=-1)
    rows, cols = out.shape[:2]
    width, height = size
    sy, sx = rows / max(height, 1), cols / max(width, 1)
    for r0, c0, r1, c1 in boxes:
        top, left = max(0, int((r0 - PAD) * sy)), max(0, int((c0 - PAD) * sx))
        bottom = min(rows - 1, max(top + 1, int(np.ceil((r1 + PAD) * sy)) - 1))
        right = min(cols - 1, max(left + 1, int(np.ceil((c1 + PAD) * sx)) - 1))
        if top >= rows or left >= cols:
            continue
        out[top, left:right + 1] = out[bottom, left:right + 1] = colour
        out[top:bottom + 1, left] = out[top:bottom + 1, right] = colour
    return out


@dataclass(frozen=True)
class Redaction:
    """What was blacked out: the original film's hash, the stored (redacted) film's hash, the boxes."""

    original_sha: str
    redacted_sha: str
    boxes: tuple[Box, ...]

    def detail(self) -> str:
        """The audit trail's sentence (labels and hashes only, never a file name)."""
        from cxr_core.io.film_facts import film_label

        return (f"burned-in text redacted: {len(self.boxes)} box(es) blacked out "
                f"{[list(b) for b in self.boxes]}; original {film_label(self.original_sha)} "
                f"(sha256 {self.original_sha}) stored as {film_label(self.redacted_sha)}")


def redact_xray(xray: Any, boxes: tuple[Box, ...] | None = None) -> tuple[Any, Redaction]:
    """The :class:`~cxr_core.io.imaging.XRay` with its text blacked out, under the redacted pixels' hash.

    ``boxes`` default to :func:`text_boxes` of the film. The file name is dropped as well.
    """
    from cxr_core.io.imaging import pixel_sha256

    boxes = text_boxes(xray.pixels) if boxes is None else tuple(boxes)
    pixels = redact(xray.pixels, boxes).astype(np.float32, copy=False)
    redacted = replace(xray, pixels=pixels, sha256=pixel_sha256(pixels), name=None)
    return redacted, Redaction(xray.sha256, redacted.sha256, boxes)


__all__ = ["OUTLINE", "PAD", "Redaction", "outline_boxes", "redact", "redact_xray", "text_boxes"]
