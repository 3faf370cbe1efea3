"""The review page's state and helpers: its session keys, the picture shown, downloads, refusals, warnings.

Films, models and cached results come from :mod:`ui.common`; what a film's facts and a batch's
summary rows are is decided in :mod:`cxr_core.io.film_facts` and :mod:`cxr_core.models.summary`.
Session-state keys start with ``review_``.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from cxr_core.errors import CXRError
from cxr_core.explain.overlay import to_jpeg_bytes
from cxr_core.io.film_facts import film_label
from cxr_core.models.manifest import ModelEntry
from cxr_core.models.summary import SummaryRow
from ui import common
from ui.common import DISPLAY_SIDE, METHOD_LABELS, Analysis, Item, refusal_text  # noqa: F401 (the page's name)

REVIEW_UPLOADS = "review_uploads"
REVIEW_SAMPLES = "review_samples"
REVIEW_SELECTED = "review_selected"
REVIEW_MODEL = "review_model"
REVIEW_METHOD = "review_method"
REVIEW_OPACITY = "review_opacity"
REVIEW_COLORMAP = "review_colormap"
REVIEW_VIEW = "review_view"
REVIEW_COMPARE = "review_compare"
REVIEW_OUTLINE = "review_outline"  # checkbox: draw the Otsu outline over the overlay
REVIEW_ZOOM = "review_zoom"  # 1, 2 or 4 (cxr_core.explain.overlay.ZOOMS)
REVIEW_ZOOM_ROW = "review_zoom_row"  # zoom centre, percent of the height from the top
REVIEW_ZOOM_COL = "review_zoom_col"  # zoom centre, percent of the width from the left


def review_target_key(model_name: str) -> str:
    """Per-model key of the target-class picker (each model has its own classes)."""
    return f"review_target::{model_name}"


VIEWS = ("Overlay", "Side by side", "Original")
PREDICTED = "__predicted__"  # target picker value: explain the model's top class


def film(item: Item) -> np.ndarray:
    """The X-ray at display size as uint8 grey."""
    return (np.clip(item.display, 0, 1) * 255).astype(np.uint8)


def overlay_image(item: Item, analysis: Analysis | None, view: str, colormap: str, opacity: float, *,
                  outline: bool = False, zoom: int = 1, centre: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """The display-size picture for one view: the film alone ("Original", or no heatmap), or with the heatmap.

    ``zoom`` > 1 cuts a 1/zoom window around ``centre`` (row, column fractions) from the full-size
    film (:func:`cxr_core.explain.overlay.zoom_view`), so a zoom shows the film's own detail.
    """
    from cxr_core.explain.overlay import overlay, zoom_view

    cam = analysis.cam if analysis is not None else None
    heatmap = None if view == "Original" or cam is None or cam.all_zero else cam.heatmap
    if zoom != 1:
        return zoom_view(item.xray.pixels, heatmap, zoom=zoom, centre=centre, max_side=DISPLAY_SIDE,
                         colormap=colormap, opacity=opacity, outline=outline)
    if heatmap is None:
        return film(item)
    return overlay(film(item), heatmap, colormap=colormap, opacity=opacity, outline=outline)


def overlay_jpeg(item: Item, analysis: Analysis | None, view: str, colormap: str, opacity: float, *,
                 model: ModelEntry, outline: bool = False, zoom: int = 1,
                 centre: tuple[float, float] = (0.5, 0.5)) -> bytes:
    """:func:`overlay_image` encoded as JPEG, made once per film, model file, heatmap and view settings
    (:func:`ui.common.picture`): a click elsewhere on the page sends the same bytes again without blending."""
    cam = analysis.cam if analysis is not None else None
    heat = None if view == "Original" or cam is None or cam.all_zero else (
        model.name, model.card.sha256, cam.method, cam.target)
    key = (item.key, item.xray.sha256, heat, colormap if heat else "", round(opacity, 3) if heat else 0.0,
           bool(outline and heat), zoom, centre if zoom != 1 else None)
    return common.picture(key, lambda: to_jpeg_bytes(overlay_image(item, analysis, view, colormap, opacity,
                                                                   outline=outline, zoom=zoom, centre=centre)))


def legend_png(width: int, colormap: str) -> bytes:
    """The heatmap colour legend (:func:`cxr_core.explain.overlay.legend_band`) as PNG bytes, made once per
    width and colour map."""
    from cxr_core.explain.overlay import legend_band, to_png_bytes

    return common.picture(("legend", width, colormap), lambda: to_png_bytes(legend_band(width, colormap=colormap)))


def overlay_caption(model: str, method: str, target: str) -> str:
    """What made a heatmap, as the downloaded overlay's footer says it: "<model> · <method> · target <class>"."""
    return f"{model} · {METHOD_LABELS.get(method, method)} · target {target}"


def full_size_overlay_png(item: Item, analysis: Analysis, colormap: str, opacity: float, outline: bool, *,
                          model: str):
    """A no-argument callable making the overlay PNG at the X-ray's original size (run on download).

    Under the film: a footer band with the legend ("low" / "high", relative within this film) and
    :func:`overlay_caption`; the same facts go in the PNG's text chunks (Model, Method, Target...).
    """
    pixels, cam = item.xray.pixels, analysis.cam
    caption = overlay_caption(model, cam.method, cam.target)
    text = {"Title": f"Heatmap overlay: {caption}", "Model": model, "Method": METHOD_LABELS.get(cam.method, cam.method),
            "Target": cam.target, "Colormap": colormap, "Legend": "low to high, relative within this film",
            "Image SHA-256": item.xray.sha256, "Comment": "model scores and heatmaps are not diagnoses"}

    def make() -> bytes:
        from cxr_core.explain.binarize import normalize, upsample
        from cxr_core.explain.overlay import overlay, to_png_bytes, with_legend

        blended = overlay(pixels, normalize(upsample(cam.grid, pixels.shape)), colormap=colormap, opacity=opacity,
                          outline=outline)
        return to_png_bytes(with_legend(blended, colormap=colormap, caption=caption), text=text)

    return make


def result_record(item: Item, entry: ModelEntry, analysis: Analysis, ood: dict | None = None) -> dict:
    """The downloadable JSON: the CLI's record (:meth:`cxr_core.analysis.FilmAnalysis.record`: file, model, scores,
    cam, ood screening, warnings) plus the image's SHA-256."""
    body = analysis.cam.to_dict() if analysis.cam is not None else analysis.prediction.to_dict()
    record = analysis.film.record(item.name) if analysis.film is not None else {"file": item.name, "model": entry.name}
    record = {**record, **body, "image_sha256": item.xray.sha256}
    if ood is not None:
        record["ood"] = ood
    if analysis.cam is None:
        record["cam"] = None
        record["cam_unavailable"] = analysis.cam_error
    record["note"] = "model scores are not diagnoses"
    return record


REVIEW_OVERRIDES_LOGGED = "review_ood_overrides_logged"  # (model, image SHA) overrides already logged


def review_override_key(item_key: str) -> str:
    """Per-image key of the expert-override checkbox for an input refused as not a chest X-ray."""
    return f"review_ood_override::{item_key}"


def ood_override(entry: ModelEntry, item: Item, analysis: Analysis) -> dict:
    """Record that the expert chose to see scores for a refused input; logged once per model and image per session."""
    logged: set = st.session_state.setdefault(REVIEW_OVERRIDES_LOGGED, set())
    key = (entry.name, item.xray.sha256)
    first = key not in logged
    logged.add(key)
    from ui import trail

    trail.once("refusal_override", item.xray.sha256, f"review page: {entry.name} shown for a film refused as not a "
               "frontal chest X-ray", ("review", entry.name, item.xray.sha256))
    return analysis.film.override_record(where="review page", by=common.current_reader_name(), log=first,
                                         image=film_label(item.xray.sha256))  # never the file name


def review_warnings(item: Item, entry: ModelEntry) -> list[str]:
    """What a reader should know before reading this model's scores for this image
    (:func:`cxr_core.safety.warnings.film_warnings`, the analysis path's own warnings, as Markdown)."""
    from cxr_core.safety.warnings import film_warnings

    return [w.markdown() for w in film_warnings(item.xray, entry.card)]


def review_summary(items: list[Item], entry: ModelEntry) -> list[SummaryRow]:
    """Each readable film's top model score, refusal and warnings under ``entry``'s model (cached per film).

    Follows the page's own path: the blinding gate first, then screening, then scores; a film the
    gate hides or the screen refuses gets no score.
    """
    from cxr_core.safety.warnings import film_warnings

    rows = []
    for item in items:
        base = {"film": film_label(item.xray.sha256), "name": item.name,
                "warnings": tuple(w.plain() for w in film_warnings(item.xray, entry.card))}
        allowed, reason = common.model_output_allowed(item.xray.sha256, item.xray.pixels)
        if not allowed:
            rows.append(SummaryRow(**base, refused="not checked", reason=reason))
            continue
        try:
            analysis = common.analyse(entry, item, None, None)
            if analysis.refused:
                rows.append(SummaryRow(**base, refused="yes", reason="does not look like a frontal chest X-ray: "
                                       + "; ".join(f"{r} ({d})" if d else r for r, d in analysis.film.refusal_lines())))
                continue
            pred = analysis.prediction
        except CXRError as exc:
            rows.append(SummaryRow(**base, refused="not checked", reason=f"{entry.name} could not be run: {exc}"))
            continue
        rows.append(SummaryRow(**base, top_class=pred.predicted, score=float(pred.confidence)))
    return rows


