"""Expert annotation, independent of the page: findings, canvas readings, drafts, new sessions.

The annotation page draws on ``streamlit-drawable-canvas`` 0.13; this module holds what it
needs that is not layout:

- Findings and their colours. The finding chosen before drawing sets the stroke colour of the
  next mark, so each mark carries its finding in the canvas JSON itself and keeps it through
  undo, redo, edits and a restored draft (:func:`region_labels` reads it back).
- The canvas's ``background_image_fit="contain"`` geometry (:func:`contain_fit`) and the
  window/level picture drawn behind the marks (:func:`window_level`).
- A reading of the canvas (:func:`read_canvas`): regions with their finding and area at the
  original resolution, through :func:`cxr_core.annotation.masks.region_masks`.
- Drafts: what to save (:func:`draft_fields`) and how to redraw one (:func:`initial_drawing`).
- Sessions from uploaded files, the bundled samples or a server folder (:func:`read_uploads`,
  :func:`read_samples`, :func:`read_folder`, :func:`create_session_from_xrays`); the sessions page
  screens each film first (:mod:`cxr_core.safety.intake`).

Canvas x/y stay in canvas pixels here; only :mod:`cxr_core.annotation.masks` turns them into rows/columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_core.errors import CXRError
from cxr_core.annotation.masks import canvas_objects, region_masks

#: Findings an expert can mark, each with the colour its marks are drawn in.
FINDINGS: dict[str, str] = {
    "consolidation": "#ff4b4b",
    "ground-glass opacity": "#ffa421",
    "nodule/mass": "#f0e130",
    "effusion": "#3d9df3",
    "other": "#21c354",
}
#: Canvas tools offered, by the name the expert sees.
TOOLS: dict[str, str] = {"Polygon": "polygon", "Freehand": "freedraw", "Rectangle": "rect", "Circle": "circle"}
#: Opacity of a region's fill, so the film stays readable under the mark.
FILL_ALPHA = 0.2
#: Most images one session takes from a folder in one go.
MAX_FOLDER_IMAGES = 2000


class AnnotationInputError(CXRError):
    """A request about annotations that cannot be met as asked (unknown finding, bad folder, ...)."""


# --- findings and colours --------------------------------------------------------------------


def _rgb(color: Any) -> tuple[int, int, int] | None:
    """``#rgb``, ``#rrggbb``, ``rgb(...)`` or ``rgba(...)`` as an (r, g, b) tuple; None if none of those."""
    if not isinstance(color, str):
        return None
    text = color.strip().lower()
    try:
        if text.startswith("#") and len(text) in (4, 7):
            digits = text[1:] if len(text) == 7 else "".join(ch * 2 for ch in text[1:])
            return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
        if text.startswith(("rgb(", "rgba(")) and text.endswith(")"):
            parts = [p.strip() for p in text[text.index("(") + 1:-1].split(",")]
            return tuple(int(round(float(p))) for p in parts[:3])  # type: ignore[return-value]
    except ValueError:
        return None
    return None


_BY_RGB = {_rgb(colour): name for name, colour in FINDINGS.items()}


def finding_color(finding: str) -> str:
    """The stroke colour of ``finding``'s marks."""
    try:
        return FINDINGS[finding]
    except KeyError:
        raise AnnotationInputError(f"finding {finding!r}; expected one of {', '.join(FINDINGS)}") from None


def finding_fill(finding: str, alpha: float = FILL_ALPHA) -> str:
    """A see-through fill in ``finding``'s colour, as the canvas wants it (``rgba(...)``)."""
    r, g, b = _rgb(finding_color(finding))  # type: ignore[misc]
    return f"rgba({r}, {g}, {b}, {alpha})"


def region_labels(objects_or_json: Any) -> list[str | None]:
    """The finding of each canvas object, read from its stroke colour (None when it matches none)."""
    return [_BY_RGB.get(_rgb(obj.get("stroke"))) for obj in canvas_objects(objects_or_json)]


# --- the canvas picture ----------------------------------------------------------------------


def contain_fit(natural_width: int, natural_height: int, canvas_width: int, canvas_height: int) -> dict[str, float]:
    """The ``background_fit`` the canvas reports for ``background_image_fit="contain"``.

    The picture is scaled by ``min(canvas_w / w, canvas_h / h)`` and centred (the 0.13 bundle's
    ``Zn``), so it is shown whole. Used when the browser has not reported its fit yet.

    Examples
    --------
    >>> contain_fit(800, 1000, 400, 400)["offset_x"]
    40.0
    """
    if min(natural_width, natural_height, canvas_width, canvas_height) <= 0:
        raise AnnotationInputError(
            f"sizes {natural_width}x{natural_height} in {canvas_width}x{canvas_height}; expected positive sizes"
        )
    scale = min(canvas_width / natural_width, canvas_height / natural_height)
    return {
        "natural_width": natural_width, "natural_height": natural_height, "scale_x": scale, "scale_y": scale,
        "offset_x": (canvas_width - natural_width * scale) / 2,
        "offset_y": (canvas_height - natural_height * scale) / 2,
    }


def window_level(pixels: np.ndarray, *, level: float = 0.5, window: float = 1.0) -> np.ndarray:
    """The film as uint8 grey through a display window: ``window`` wide, centred on ``level``.

    Parameters
    ----------
    pixels : (H, W) ndarray
        Float in [0, 1] (``XRay.pixels`` or a resized copy); not changed.
    level : float
        Window centre in [0, 1]; lower makes the film brighter.
    window : float
        Window width in (0, 1]; narrower gives more contrast.

    Examples
    --------
    >>> window_level(np.array([[0.0, 0.5, 1.0]]), level=0.5, window=0.5).tolist()
    [[0, 128, 255]]
    """
    if not 0 < window <= 1 or not 0 <= level <= 1:
        raise AnnotationInputError(f"window {window}, level {level}; expected window in (0, 1] and level in [0, 1]")
    low = level - window / 2
    out = np.clip((np.asarray(pixels, dtype=np.float32) - low) / window, 0, 1)
    return np.rint(out * 255).astype(np.uint8)


# --- reading the canvas ----------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """One mark on the canvas: where it is in the objects list, its shape, finding and area."""

    index: int
    kind: str
    finding: str | None
    area_px: int


@dataclass(frozen=True)
class CanvasReading:
    """What the expert has drawn, measured on the original image.

    ``labels`` is aligned with the canvas objects (for :func:`cxr_core.storage.submit_annotation`);
    ``regions`` lists only the marks that enclose an area.
    """

    objects: list[dict]
    labels: list[str | None]
    regions: list[Region]
    area_px: int  # union of all regions
    image_pixels: int

    @property
    def unlabelled(self) -> list[int]:
        """Positions (1-based, as shown) of regions whose colour matches no finding."""
        return [n for n, r in enumerate(self.regions, 1) if r.finding is None]

    @property
    def area_fraction(self) -> float:
        return self.area_px / self.image_pixels


def read_canvas(
    json_data: Any, *, image_shape: tuple[int, int], background_fit: Mapping[str, float] | None
) -> CanvasReading:
    """Regions, findings and areas of a canvas drawing over an image of ``image_shape``.

    Raises
    ------
    cxr_core.annotation.masks.MaskError
        Unreadable JSON or fit; an object that is no region.
    """
    objects = canvas_objects(json_data)
    labels = region_labels(objects)
    masks = region_masks(objects, image_shape=image_shape, background_fit=background_fit, labels=labels)
    union = np.zeros(image_shape, dtype=bool)
    for m in masks:
        union |= m.mask
    regions = [Region(m.index, m.kind, m.label, m.area) for m in masks]
    return CanvasReading(objects, labels, regions, int(union.sum()), int(image_shape[0] * image_shape[1]))


def submission_problems(diagnosis: str | None, confidence: int | None, reading: CanvasReading | None, *,
                        exclusion: str | None = None) -> list[str]:
    """What stops a reading from being submitted, as instructions to the reader ([] when nothing does).

    ``reading`` is None when the drawing could not be measured. A film excluded (``exclusion``,
    e.g. "not readable") needs neither a diagnosis nor a confidence.
    """
    problems = []
    if diagnosis is None and exclusion is None:
        problems.append("choose your diagnosis")
    if confidence is None and exclusion is None:
        problems.append("choose your confidence")
    if reading is None:
        problems.append("fix the drawing (see the message under the canvas)")
    elif reading.unlabelled:
        problems.append(f"mark(s) {reading.unlabelled} have a colour that matches no finding; undo and redraw them")
    return problems


# --- drafts ----------------------------------------------------------------------------------


def drawing_key(objects_or_json: Any, *extra: Any) -> str:
    """A stable text key of a drawing (and any extra fields): equal keys mean nothing to save."""
    return json.dumps([canvas_objects(objects_or_json), *extra], sort_keys=True, default=str)


def draft_fields(
    json_data: Any,
    *,
    canvas_width: int,
    canvas_height: int,
    background_fit: Mapping[str, float] | None,
    diagnosis: str | None,
    confidence: int | None,
) -> dict[str, Any]:
    """Keyword arguments of :func:`cxr_core.storage.save_draft` for the canvas as it is now."""
    objects = canvas_objects(json_data)
    version = json_data.get("version") if isinstance(json_data, Mapping) else None
    canvas = {"version": version, "objects": objects} if version else {"objects": objects}
    return dict(
        canvas_json=canvas, canvas_width=int(canvas_width), canvas_height=int(canvas_height),
        background_fit=dict(background_fit) if background_fit else None, labels=region_labels(objects),
        diagnosis=diagnosis, confidence=confidence,
    )


def initial_drawing(canvas_json: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``initial_drawing`` that redraws a stored drawing (draft or submission) on the canvas."""
    if not canvas_json:
        return {"objects": []}
    out = {"objects": canvas_objects(canvas_json)}
    if canvas_json.get("version"):
        out["version"] = canvas_json["version"]
    return out


# --- images for a new session ----------------------------------------------------------------


@dataclass(frozen=True)
class SessionImages:
    """Images read for a new session, their reference labels (if known), and what could not be read."""

    xrays: list  # cxr_core.io.imaging.XRay
    labels: list[str | None]
    errors: list[str]


def read_uploads(files: Iterable[tuple[str, bytes]]) -> SessionImages:
    """Decode ``(name, content)`` pairs (e.g. uploads); unreadable files become error lines."""
    from cxr_core.io.imaging import load_xray

    xrays, errors = [], []
    for name, data in files:
        try:
            xrays.append(load_xray(data, name))
        except CXRError as err:
            errors.append(f"{name}: {err}")
    return SessionImages(xrays, [None] * len(xrays), errors)


def read_samples(samples_dir: Path, files: Sequence[str] | None = None) -> SessionImages:
    """The bundled samples listed in ``samples_dir/samples.json`` (all, or those in ``files``).

    Each entry is ``{"file": ..., "label": ...}``; the label becomes the image's reference
    label. No samples.json, or an empty one, gives no images and one error line saying so.
    """
    from cxr_core.io.imaging import load_xray
    from cxr_core.io.samples import sample_entries

    entries, why = sample_entries(samples_dir, files)
    if not entries:
        return SessionImages([], [], [why])
    xrays, labels, errors = [], [], []
    for entry in entries:
        try:
            xrays.append(load_xray(samples_dir / str(entry["file"])))
            labels.append(entry.get("label") or None)
        except CXRError as err:
            errors.append(f"{entry['file']}: {err}")
    return SessionImages(xrays, labels, errors)


def read_folder(folder: str | Path, *, limit: int = MAX_FOLDER_IMAGES) -> SessionImages:
    """Every readable X-ray directly in ``folder`` on the server, by file name.

    Hidden files are skipped, and so are files whose extension is not an image one
    (:data:`cxr_core.io.imaging.IMAGE_SUFFIXES`, or none: DICOM); files that do not decode become error lines.

    Raises
    ------
    AnnotationInputError
        ``folder`` is not a folder, or holds more than ``limit`` image files.
    """
    return read_uploads((p.name, p.read_bytes()) for p in folder_files(folder, limit=limit))


def folder_files(folder: str | Path, *, limit: int = MAX_FOLDER_IMAGES) -> list[Path]:
    """The image files directly in ``folder`` on the server, by name (hidden and non-image files left out).

    Raises
    ------
    AnnotationInputError
        ``folder`` is not a folder, or holds more than ``limit`` image files.
    """
    from cxr_core.io.imaging import is_image_name

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise AnnotationInputError(f"{str(folder)!r} is not a folder on the server; expected a folder of X-rays")
    files = sorted(p for p in path.iterdir() if p.is_file() and is_image_name(p, bare=True))
    if len(files) > limit:
        raise AnnotationInputError(f"{path} holds {len(files)} image files; at most {limit} go in one session")
    return files


def create_session_from_xrays(
    s: Any,
    *,
    name: str,
    images: SessionImages | Iterable[tuple[Any, str | None]],
    reader_ids: Sequence[int],
    blind: bool = True,
    created_by: int | None = None,
    shuffle: bool = True,
    seed: int | None = None,
) -> Any:
    """Store the images (once each, by pixel hash) and create the session, in the caller's transaction.

    ``images`` is a :class:`SessionImages`, or ``(XRay, reference label)`` pairs taken one at a time
    (a generator decoding each file as it is asked for keeps one film in memory; see
    :func:`cxr_core.safety.intake.create_session`). Returns the :class:`cxr_core.storage.AnnotationSession`;
    raises :class:`cxr_core.storage.StorageError` for a bad name, no images or unknown readers.
    """
    from cxr_core import storage

    pairs = zip(images.xrays, images.labels) if isinstance(images, SessionImages) else images
    shas = [storage.add_xray(s, xray, reference_label=label).sha256 for xray, label in pairs]
    return storage.create_session(
        s, name=name, image_shas=shas, reader_ids=reader_ids, blind=blind, created_by=created_by,
        shuffle=shuffle, seed=seed,
    )
