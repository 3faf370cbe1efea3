"""Dataset audit: where does a model look, image by image, and does one class look outside the lungs?

Every image takes the one analysis path (:func:`cxr_core.analysis.analyse_films`): a film that does not
look like a frontal chest X-ray (a photograph, a CT or MR slice, a retina picture...) is **refused**, listed
in ``AuditReport.refused`` with the screen's plain reasons and measured figures, and in no number.
For every other image the audit runs the model and Grad-CAM once and records which share of the
heatmap's mass (sum of its values, after the per-image min-max scaling) falls in

- ``border``: the outer band, 8 % of the shorter side wide;
- ``top_left`` ... ``bottom_right``: the four corner squares, 20 % of the shorter side;
- ``markers``: the boxes :func:`cxr_core.safety.markers.detect_markers` found (text, "L"/"R", plates);
- ``outside_lungs``: everything outside the lung fields (expert masks when given, matched by
  file stem; otherwise the U-Net estimate of :mod:`cxr_core.models.lungs`).

Next to each share it records that region's share of the image's *area*: a heatmap spread evenly
over the film would put exactly that much mass there, so a share is only high when it beats its
area. Images stream through in batches (decode, markers and lungs for the next batch are prepared
in threads while the model runs): memory holds one batch of heatmaps, the per-image records
(numbers only) and the thumbnails of the ``top_k`` images with the most mass outside the lungs.

Per-class summaries (by predicted class and, where labels exist, by true class) are bootstrap
means with 95 % intervals, resampling patients when patient ids are known. A class is flagged as
a possible shortcut when its mean outside-lung share exceeds every other class's by at least
``SHORTCUT_MARGIN`` and the bootstrap interval of that difference excludes zero
(:mod:`cxr_core.audit.stats`).

A shortcut that is not a place on the film (hospital, age) is looked for separately, per extra manifest
column: subgroup metrics and a probe of the model's features (:mod:`cxr_core.audit.confounds`,
:func:`~cxr_core.audit.confounds.add_to_report`), kept in ``AuditReport.subgroups`` and ``.confounds``.

About 430 lines by choice: the per-film region shares and the report that sums them are one record type
and one pass; the statistics, the confound probe and the HTML already live in their own modules.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cxr_core.audit.stats import REGIONS, SHORTCUT_MARGIN, shortcut_flags, summarise
from cxr_core.errors import CXRError, DataError
from cxr_core.safety.markers import border_mask, corner_masks, detect_markers, marker_mask, mask_markers

THUMB_SIDE = 192
FORMAT = "cxr-review-audit/1"


@dataclass(frozen=True)
class AuditItem:
    """One image to audit: its file, true label (``""`` if unknown) and patient id (``""`` if unknown);
    ``columns`` are the manifest's extra columns (``source``, ``age_group``...), the subgroups of
    :mod:`cxr_core.audit.confounds`."""

    file: Path
    label: str = ""
    patient_id: str = ""
    columns: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class ImageAudit:
    """The audit of one image (numbers only; no heatmap is kept).

    ``shares`` maps each of :data:`REGIONS` to the heatmap mass share there (None when the map was
    all zero); ``areas`` to the region's share of the image area; ``markers`` lists the detections
    as ``{"kind", "box": [row0, col0, row1, col1]}``; ``lung_source`` is ``"expert"`` or ``"estimate"``.
    """

    file: str
    label: str
    patient_id: str
    predicted: str
    confidence: float
    shares: dict
    areas: dict
    markers: list
    lung_source: str
    all_zero: bool = False
    sha256: str = ""

    @property
    def outside(self) -> float | None:
        return self.shares.get("outside_lungs")

    def beyond_chance(self) -> bool:
        """More heatmap mass outside the lungs than an even spread over the film would put there."""
        return self.outside is not None and self.outside > self.areas["outside_lungs"]


@dataclass
class Flagged:
    """One of the images most driven by outside-lung evidence, with a small overlay (PNG bytes)."""

    file: str
    label: str
    predicted: str
    outside: float
    outside_area: float
    sha256: str = ""
    thumbnail: bytes = field(repr=False, default=b"")


@dataclass
class AuditReport:
    """Everything an audit found; :func:`to_json` / :func:`from_json` round-trip it."""

    model: str
    classes: list
    images: list
    flagged: list
    settings: dict
    failures: list = field(default_factory=list)
    #: Films refused as not a frontal chest X-ray: ``{"file", "sha256", "model", "reasons", "details", "checks"}``.
    refused: list = field(default_factory=list)
    #: column -> value -> class -> metrics (:func:`cxr_core.audit.subgroups.subgroup_metrics`).
    subgroups: dict = field(default_factory=dict)
    #: ``{column, feature_auroc, label_association, flagged, evidence, ...}`` (:mod:`cxr_core.audit.confounds`).
    confounds: list = field(default_factory=list)
    #: Pixel SHA-256 of the films the two above were computed from (they are dropped when one leaves the audit).
    confound_films: list = field(default_factory=list)

    def summary(self, by: str = "predicted", **kwargs) -> dict:
        """:func:`summarise` of this report's images."""
        return summarise(self.images, by=by, **kwargs)

    def shortcuts(self, by: str = "predicted", **kwargs) -> list[dict]:
        """:func:`shortcut_flags` of this report's images."""
        return shortcut_flags(self.images, by=by, **kwargs)


# --------------------------------------------------------------------------------------------
# Per image
# --------------------------------------------------------------------------------------------

def image_regions(shape: tuple[int, int], lungs: np.ndarray, markers: Sequence) -> dict[str, np.ndarray]:
    """``{region: bool (H, W) mask}`` for every one of :data:`REGIONS`."""
    lungs = np.asarray(lungs, bool)
    if lungs.shape != tuple(shape):
        raise DataError(f"lung mask is {lungs.shape[1]}x{lungs.shape[0]} px but the image is {shape[1]}x{shape[0]} px")
    return {"border": border_mask(shape), **corner_masks(shape), "markers": marker_mask(shape, list(markers)),
            "outside_lungs": ~lungs}


def region_shares(heatmap: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Share of ``heatmap``'s total mass inside each region (None for an all-zero map).

    Examples
    --------
    >>> h = np.zeros((4, 4)); h[0, 0] = 3; h[2, 2] = 1
    >>> m = np.zeros((4, 4), bool); m[0, 0] = True
    >>> region_shares(h, {"corner": m})
    {'corner': 0.75}
    """
    heat = np.asarray(heatmap, np.float64)
    total = float(heat.sum())
    if not total > 0:
        return {name: None for name in regions}
    return {name: float(heat[mask].sum() / total) for name, mask in regions.items()}


def region_areas(regions: dict[str, np.ndarray]) -> dict[str, float]:
    """Each region's share of the image area (what an evenly spread heatmap would give)."""
    return {name: float(mask.mean()) for name, mask in regions.items()}


def thumbnail(pixels: np.ndarray, heatmap: np.ndarray, lungs: np.ndarray, markers: Sequence,
              *, side: int = THUMB_SIDE) -> bytes:
    """A small PNG: the film, the heatmap in JET at 45 %, the lung outline in green, markers in red."""
    rows, cols = pixels.shape
    scale = side / max(rows, cols)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    gray = cv2.resize(np.clip(pixels * 255, 0, 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    heat = cv2.resize((np.clip(heatmap, 0, 1) * 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    blend = cv2.addWeighted(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), 0.55, cv2.applyColorMap(heat, cv2.COLORMAP_JET), 0.45, 0)
    small_lungs = cv2.resize(np.asarray(lungs, np.uint8), size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(small_lungs, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(blend, contours, -1, (0, 255, 0), 1)
    for m in markers:
        r0, c0, r1, c1 = (int(round(v * scale)) for v in m.box)
        cv2.rectangle(blend, (c0, r0), (max(c0, c1 - 1), max(r0, r1 - 1)), (0, 0, 255), 1)
    ok, png = cv2.imencode(".png", blend)
    return png.tobytes() if ok else b""


# --------------------------------------------------------------------------------------------
# The streaming run
# --------------------------------------------------------------------------------------------

@dataclass
class _Prepared:
    item: AuditItem
    xray: object | None = None  # cxr_core.io.imaging.XRay
    pixels: np.ndarray | None = None
    model_pixels: np.ndarray | None = None
    markers: list = field(default_factory=list)
    lungs: np.ndarray | None = None
    lung_source: str = ""
    sha256: str = ""
    error: str = ""


def _prepare_one(item: AuditItem, mask_index: dict | None, clean: bool) -> _Prepared:
    from cxr_core.io.imaging import load_xray
    from cxr_core.models.lungs import mask_for, read_mask

    try:
        xray = load_xray(item.file)
        pixels = xray.pixels
        markers = detect_markers(pixels)
        prepared = _Prepared(item, xray, pixels, mask_markers(pixels, markers=markers) if clean else pixels, markers,
                             sha256=xray.sha256)
        path = mask_for(Path(item.file).stem, mask_index, image=item.file) if mask_index else None
        if path is not None:
            prepared.lungs, prepared.lung_source = read_mask(path, pixels.shape), "expert"
        return prepared
    except CXRError as exc:
        return _Prepared(item, error=str(exc))


def _chunks(items: Iterable[AuditItem], size: int) -> Iterator[list[AuditItem]]:
    chunk: list[AuditItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_audit(
    engine,
    items: Iterable[AuditItem],
    *,
    lung_masks: Path | str | None = None,
    lung_estimator=None,
    batch_size: int = 16,
    mask_markers_first: bool = False,
    top_k: int = 12,
    total: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 2,
    model_name: str = "",
    loaded=None,
    screener=None,
    allow_ood: bool = False,
) -> AuditReport:
    """Audit every image of ``items`` with a :class:`~cxr_core.explain.cam.CamEngine`.

    Parameters
    ----------
    engine : CamEngine
        Gives predictions and Grad-CAM heatmaps (``run_arrays``).
    items : iterable of AuditItem
        Read lazily, one batch at a time.
    loaded : LoadedModel, optional
        The registry model ``engine`` belongs to: films are screened by its screener (image checks and
        its out-of-distribution detector). Without it, by the image checks alone (or ``screener``).
    screener : :class:`~cxr_core.safety.screening.Screener`, optional
    allow_ood : score refused films too (an expert override; they are still listed in ``refused``).
    lung_masks : folder of expert lung masks, matched by file stem (see :func:`cxr_core.models.lungs.mask_for`).
    lung_estimator : :class:`~cxr_core.models.lungs.LungEstimator` for images without an expert mask;
        loaded from ``weights/lungseg/`` when needed and not given.
    batch_size : images per model call.
    mask_markers_first : run the model on :func:`~cxr_core.safety.markers.mask_markers` output (the
        ``--mask-markers`` preprocessing); regions are still measured on the original film.
    top_k : how many of the images with the most outside-lung mass keep a thumbnail.
    total : number of items, for ``progress`` (``len(items)`` when it has one).
    progress : called as ``progress(done, total)`` after each batch.
    workers : threads that decode and prepare the next batch while the model runs.

    Returns
    -------
    AuditReport

    Raises
    ------
    CXRError
        ``batch_size`` or ``top_k`` below 1 / 0, a missing mask folder, or no readable image.
    """
    from cxr_core.models.lungs import LungEstimator, index_masks

    if batch_size < 1 or top_k < 0:
        raise CXRError(f"batch_size must be >= 1 and top_k >= 0; got {batch_size} and {top_k}")
    mask_index = index_masks(lung_masks) if lung_masks is not None else None
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    from cxr_core.analysis import analyse_films

    images: list[ImageAudit] = []
    failures: list[dict] = []
    refused: list[dict] = []
    heap: list[tuple[float, int, Flagged]] = []
    done = 0
    chunks = _chunks(items, batch_size)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        def submit(chunk):
            return [pool.submit(_prepare_one, item, mask_index, mask_markers_first) for item in chunk]

        pending = submit(next(chunks, []))
        while pending:
            batch = [f.result() for f in pending]
            pending = submit(next(chunks, []))  # decode the next batch while this one runs
            for p in batch:
                if p.error:
                    failures.append({"file": str(p.item.file), "error": p.error})
            ready = [p for p in batch if not p.error]
            analyses = analyse_films(loaded if loaded is not None else engine, [p.xray for p in ready],
                                     method="gradcam", screener=screener, engine=engine, allow_ood=allow_ood,
                                     model_pixels=[p.model_pixels for p in ready], batch_size=batch_size,
                                     name=model_name or None) if ready else []
            for p, a in zip(ready, analyses):
                if not a.screening.ok:
                    refused.append({"file": str(p.item.file), "sha256": p.sha256, **a.refusal_row(),
                                    "overridden": a.overridden})
            good = [p for p, a in zip(ready, analyses) if a.analysed]
            results = [a.cam for a in analyses if a.analysed]
            need = [p for p in good if p.lungs is None]
            if need:
                if lung_estimator is None:
                    lung_estimator = LungEstimator.load()
                for p, lungs in zip(need, lung_estimator.estimate([p.pixels for p in need])):
                    p.lungs, p.lung_source = lungs, "estimate"
            for p, res in zip(good, results):
                regions = image_regions(p.pixels.shape, p.lungs, p.markers)
                record = ImageAudit(
                    file=str(p.item.file), label=p.item.label, patient_id=p.item.patient_id,
                    predicted=res.prediction.predicted, confidence=res.prediction.confidence,
                    shares=region_shares(res.heatmap, regions), areas=region_areas(regions),
                    markers=[m.to_dict() for m in p.markers], lung_source=p.lung_source, all_zero=res.all_zero,
                    sha256=p.sha256,
                )
                images.append(record)
                if top_k and record.beyond_chance():
                    key = (record.outside, -len(images))
                    if len(heap) < top_k or key > heap[0][:2]:
                        flag = Flagged(record.file, record.label, record.predicted, record.outside,
                                       record.areas["outside_lungs"], record.sha256,
                                       thumbnail(p.pixels, res.heatmap, p.lungs, p.markers))
                        item = (record.outside, -len(images), flag)
                        heapq.heappush(heap, item) if len(heap) < top_k else heapq.heapreplace(heap, item)
            done += len(batch)
            if progress is not None:
                progress(done, total if total is not None else done)
    if not images:
        detail = (f": {failures[0]['file']}: {failures[0]['error']}" if failures else
                  f": {refused[0]['file']}: {'; '.join(refused[0]['reasons'])}" if refused else "")
        raise DataError(f"no image could be audited ({len(failures)} unreadable, {len(refused)} refused as not a "
                        f"frontal chest X-ray){detail}")
    flagged = [f for _, _, f in sorted(heap, key=lambda t: (-t[0], -t[1]))]
    settings = {
        "batch_size": batch_size, "mask_markers": mask_markers_first, "top_k": top_k,
        "lung_masks": str(lung_masks) if lung_masks is not None else None,
        "shortcut_margin": SHORTCUT_MARGIN, "method": "gradcam",
    }
    return AuditReport(model_name, list(engine.classes), images, flagged, settings, failures, refused)


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------

def to_json(report: AuditReport, *, n_boot: int = 1000) -> dict:
    """A JSON-ready dict: settings, summaries, shortcut flags, per-image records, flagged thumbnails (base64)."""
    import base64

    has_labels = any(im.label for im in report.images)
    # Subgroups and confounds cannot be recomputed from the per-image records: shown only while every film
    # they were computed from is still in the report (a film taken out, e.g. read blind, takes them out).
    present = {im.sha256 for im in report.images}
    complete = all(sha and sha in present for sha in report.confound_films)
    return {
        "format": FORMAT,
        "model": report.model,
        "classes": list(report.classes),
        "settings": report.settings,
        "note": "Heatmap shares describe where the model's evidence lies; model scores are not diagnoses.",
        "n_images": len(report.images),
        "failures": report.failures,
        "n_refused": sum(not r.get("overridden") for r in report.refused),
        "refused": report.refused,
        "summary_by_predicted": report.summary("predicted", n_boot=n_boot),
        "summary_by_label": report.summary("label", n_boot=n_boot) if has_labels else {},
        "shortcuts_by_predicted": report.shortcuts("predicted", n_boot=n_boot),
        "shortcuts_by_label": report.shortcuts("label", n_boot=n_boot) if has_labels else [],
        "flagged": [{**{k: v for k, v in asdict(f).items() if k != "thumbnail"},
                     "thumbnail_png_base64": base64.b64encode(f.thumbnail).decode()} for f in report.flagged],
        "images": [asdict(im) for im in report.images],
        "subgroups": report.subgroups if complete else {},
        "confounds": report.confounds if complete else [],
        "confound_films": report.confound_films if complete else [],
    }


def from_json(data: dict) -> AuditReport:
    """Rebuild an :class:`AuditReport` from :func:`to_json` output.

    Raises
    ------
    DataError
        Not an audit file of this format.
    """
    import base64

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"not a CXR Review audit (format {got!r}); expected {FORMAT!r}")
    try:
        images = [ImageAudit(**im) for im in data["images"]]
        flagged = [Flagged(**{k: v for k, v in f.items() if k != "thumbnail_png_base64"},
                           thumbnail=base64.b64decode(f.get("thumbnail_png_base64", ""))) for f in data["flagged"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"audit file is damaged: {exc}") from exc
    return AuditReport(data.get("model", ""), data.get("classes", []), images, flagged,
                       data.get("settings", {}), data.get("failures", []), data.get("refused", []),
                       data.get("subgroups") or {}, data.get("confounds") or [], data.get("confound_films") or [])


def fmt_share(value: float | None) -> str:
    """``0.412`` -> ``"41%"``; None -> ``"n/a"``."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0%}"


__all__ = [
    "REGIONS", "SHORTCUT_MARGIN", "AuditItem", "ImageAudit", "Flagged", "AuditReport", "image_regions",
    "region_shares", "region_areas", "thumbnail", "run_audit", "summarise", "shortcut_flags", "to_json",
    "from_json", "fmt_share",
]
