"""Burned-in text, side markers and uniform boxes on a film, and the border regions an audit scores.

Everything here works on (H, W) [0, 1] pixels with OpenCV and returns plain arrays or small frozen
records; boxes are ``(row0, col0, row1, col1)`` with the end exclusive (rows/cols, never x/y).

- :func:`detect_markers`: bright, sharp-edged glyphs grouped into words (``"text"``) or left
  alone as single glyphs (``"marker"``, the "L"/"R" side markers), plus ``"box"``: large
  perfectly flat rectangles (privacy boxes, the grey plates side markers sit on, figure borders).
- :func:`marker_mask`, :func:`border_mask`, :func:`corner_masks`: boolean masks for an audit.
- :func:`mask_markers`: the optional ``--mask-markers`` preprocessing step (inpaint or black out
  the markers and the border band), used the same way by training and inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Width of the outer border band, as a fraction of the shorter side.
BORDER_FRACTION = 0.08
#: Side of each corner square, as a fraction of the shorter side.
CORNER_FRACTION = 0.2
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
KINDS = ("text", "marker", "box")


@dataclass(frozen=True)
class Marker:
    """One detected burned-in thing.

    Attributes
    ----------
    kind : ``"text"`` (several glyphs in a row), ``"marker"`` (one glyph, e.g. "L" or "R") or
        ``"box"`` (a flat uniform rectangle).
    box : (row0, col0, row1, col1), end exclusive, in image pixels.
    """

    kind: str
    box: tuple[int, int, int, int]

    @property
    def area(self) -> int:
        r0, c0, r1, c1 = self.box
        return (r1 - r0) * (c1 - c0)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "box": list(self.box)}


def _as_pixels(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"expected (H, W) grayscale pixels, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _odd(n: float) -> int:
    n = max(3, int(round(n)))
    return n if n % 2 else n + 1


def _glyph_candidates(img8: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes of bright, sharp-edged, glyph-sized blobs (one per character or symbol)."""
    rows, cols = img8.shape
    side = min(rows, cols)
    # A white top-hat keeps bright things narrower than the kernel: glyphs, but also thin ribs and
    # wires, which the contrast, edge and size tests below remove.
    k = _odd(0.15 * side)
    tophat = cv2.morphologyEx(img8, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    bright = ((tophat >= 40) & (img8 >= 100)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    boxes = []
    for i in range(1, n):
        c0, r0, w, h, area = stats[i]
        if not (0.012 * side <= h <= 0.18 * side and w <= 0.15 * side and area >= 12):
            continue
        if area / float(w * h) > 0.9 and min(w, h) > 4:  # a solid block is not a glyph (see _flat_boxes)
            continue
        if max(w, h) / max(1, min(w, h)) > 8:  # wire or line fragment
            continue
        # One pixel of margin so that the blob's outline is inside the window.
        rs, cs = slice(max(0, r0 - 1), r0 + h + 1), slice(max(0, c0 - 1), c0 + w + 1)
        comp = labels[rs, cs] == i
        edge = cv2.morphologyEx(comp.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        # Printed glyphs stand far above their surroundings and jump there within a pixel or two;
        # bone, vessels and nodules are dimmer above their surroundings and blurrier.
        if tophat[rs, cs][comp].mean() < 80 or np.median(_gradient(img8, rs, cs)[edge]) < 200:
            continue
        boxes.append((int(r0), int(c0), int(r0 + h), int(c0 + w)))
    return boxes


def _gradient(img8: np.ndarray, rs: slice, cs: slice) -> np.ndarray:
    """Sobel magnitude of ``img8`` over the window ``[rs, cs]``, equal to the whole film's there.

    Computed on the window grown by one pixel (the kernel's reach), so the film's gradient is never held
    whole: three float32 films were most of screening's memory (issue 15)."""
    r0, r1 = max(0, rs.start - 1), min(img8.shape[0], rs.stop + 1)
    c0, c1 = max(0, cs.start - 1), min(img8.shape[1], cs.stop + 1)
    window = img8[r0:r1, c0:c1]
    grad = np.hypot(cv2.Sobel(window, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(window, cv2.CV_32F, 0, 1, ksize=3))
    return grad[rs.start - r0:rs.start - r0 + (min(rs.stop, img8.shape[0]) - rs.start),
                cs.start - c0:cs.start - c0 + (min(cs.stop, img8.shape[1]) - cs.start)]


def _group_glyphs(boxes: list[tuple[int, int, int, int]], shape: tuple[int, int]) -> list[Marker]:
    """Merge glyphs on one line into words; a lone glyph is a side marker."""
    if not boxes:
        return []
    canvas = np.zeros(shape, np.uint8)
    heights = []
    for r0, c0, r1, c1 in boxes:
        canvas[r0:r1, c0:c1] = 1
        heights.append(r1 - r0)
    gap = _odd(0.9 * float(np.median(heights)))
    joined = cv2.dilate(canvas, cv2.getStructuringElement(cv2.MORPH_RECT, (gap, 3)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    out = []
    for i in range(1, n):
        inside = [b for b in boxes if labels[b[0], b[1]] == i]
        if not inside:
            continue
        r0 = min(b[0] for b in inside)
        c0 = min(b[1] for b in inside)
        r1 = max(b[2] for b in inside)
        c1 = max(b[3] for b in inside)
        out.append(Marker("text" if len(inside) >= 2 else "marker", (r0, c0, r1, c1)))
    return out


def _flat_boxes(img8: np.ndarray) -> list[Marker]:
    """Large rectangles of one grey level (max - min <= 2 of 255 in every 5x5 window)."""
    rows, cols = img8.shape
    side = min(rows, cols)
    kernel = np.ones((5, 5), np.uint8)
    spread = cv2.dilate(img8, kernel).astype(np.int16) - cv2.erode(img8, kernel)
    flat = (spread <= 2).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(flat, connectivity=4)
    out = []
    for i in range(1, n):
        c0, r0, w, h, area = stats[i]
        if min(w, h) < 0.02 * side or area < 0.003 * rows * cols:
            continue
        if area / float(w * h) < 0.8:  # flat but not a rectangle: the air outside the body
            continue
        if w * h > 0.5 * rows * cols:
            continue
        # A flat rectangle the erosion shrank: grow it back by the window's half-width.
        out.append(Marker("box", (int(max(0, r0 - 2)), int(max(0, c0 - 2)), int(min(rows, r0 + h + 2)),
                                       int(min(cols, c0 + w + 2)))))
    return out


def detect_markers(pixels: np.ndarray) -> list[Marker]:
    """Burned-in text, side markers and flat boxes on one film.

    Parameters
    ----------
    pixels : (H, W) ndarray
        Grayscale in [0, 1], bone bright.

    Returns
    -------
    list of Marker
        Sorted top to bottom, left to right; empty for a clean film.

    Notes
    -----
    Glyphs are blobs that a white top-hat (kernel 7 % of the shorter side) leaves at least 60 of
    255 above their surroundings, that are themselves brighter than 150, 1.2-10 % of the shorter
    side tall, not line-like (aspect <= 8) and whose edges are printed-sharp (median Sobel
    magnitude >= 180). Boxes are 4-connected regions whose 5x5 neighbourhoods vary by at most 2
    grey levels, fill >= 80 % of their bounding rectangle and are at least 3 % of the shorter side
    on each side. Neither test reads letters: an "L" and an "R" are both reported as ``"marker"``.

    Examples
    --------
    >>> import numpy as np, cv2
    >>> img = np.random.default_rng(0).normal(80, 5, (256, 256)).clip(0, 255).astype(np.uint8)
    >>> _ = cv2.putText(img, "R", (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)  # (x, y) for OpenCV
    >>> [(m.kind, m.box) for m in detect_markers(img / 255.0)]
    [('marker', (23, 21, 40, 36))]
    """
    arr = _as_pixels(pixels)
    img8 = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    found = _group_glyphs(_glyph_candidates(img8), img8.shape) + _flat_boxes(img8)
    return sorted(found, key=lambda m: (m.box[0], m.box[1], m.kind))


def marker_mask(shape: tuple[int, int], markers: list[Marker], *, pad: int = 2) -> np.ndarray:
    """Bool (H, W) mask covering each marker's box grown by ``pad`` pixels."""
    mask = np.zeros(shape, bool)
    for m in markers:
        r0, c0, r1, c1 = m.box
        mask[max(0, r0 - pad):r1 + pad, max(0, c0 - pad):c1 + pad] = True
    return mask


def border_mask(shape: tuple[int, int], *, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Bool (H, W) mask of the outer band, ``fraction`` of the shorter side wide."""
    rows, cols = shape
    band = max(1, int(round(fraction * min(rows, cols))))
    mask = np.ones(shape, bool)
    mask[band:rows - band, band:cols - band] = False
    return mask


def corner_masks(shape: tuple[int, int], *, fraction: float = CORNER_FRACTION) -> dict[str, np.ndarray]:
    """``{corner: bool (H, W) mask}`` of the four corner squares, ``fraction`` of the shorter side."""
    rows, cols = shape
    side = max(1, int(round(fraction * min(rows, cols))))
    out = {}
    for name, rs, cs in (
        ("top_left", slice(0, side), slice(0, side)),
        ("top_right", slice(0, side), slice(cols - side, cols)),
        ("bottom_left", slice(rows - side, rows), slice(0, side)),
        ("bottom_right", slice(rows - side, rows), slice(cols - side, cols)),
    ):
        mask = np.zeros(shape, bool)
        mask[rs, cs] = True
        out[name] = mask
    return out


def mask_markers(
    pixels: np.ndarray,
    *,
    markers: list[Marker] | None = None,
    method: str = "inpaint",
    border: float = BORDER_FRACTION,
) -> np.ndarray:
    """Remove burned-in markers and the border band before a network sees the film.

    The ``--mask-markers`` preprocessing step: pass it to :func:`cxr_core.models.preprocess.prepare`
    as ``pixel_step`` in training and inference alike.

    Parameters
    ----------
    pixels : (H, W) ndarray in [0, 1].
    markers : detections to remove; detected here when None.
    method : ``"inpaint"`` (Telea inpainting of the markers, border set to black) or ``"black"``
        (markers and border set to 0).
    border : width of the blacked-out outer band as a fraction of the shorter side (0 keeps it).

    Returns
    -------
    (H, W) float32 ndarray
        A new array; ``pixels`` is left untouched.

    Raises
    ------
    ValueError
        Unknown ``method`` or a non-2-D input.
    """
    if method not in ("inpaint", "black"):
        raise ValueError(f"method must be 'inpaint' or 'black', got {method!r}")
    arr = _as_pixels(pixels)
    found = detect_markers(arr) if markers is None else markers
    hide = marker_mask(arr.shape, found)
    if method == "inpaint" and hide.any():
        img8 = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        radius = max(3, int(0.01 * min(arr.shape)))
        out = cv2.inpaint(img8, hide.astype(np.uint8), radius, cv2.INPAINT_TELEA).astype(np.float32) / 255.0
    else:
        out = arr.copy()
        out[hide] = 0.0
    if border > 0:
        out[border_mask(arr.shape, fraction=border)] = 0.0
    return out


__all__ = [
    "Marker", "KINDS", "CORNERS", "BORDER_FRACTION", "CORNER_FRACTION", "detect_markers", "marker_mask",
    "border_mask", "corner_masks", "mask_markers",
]
