"""Everything the pages share: cached ``cxr_core`` wrappers and session-state keys, grouped by page.

Pages only lay out widgets; what they compute comes from here. Rules:

- Models and CAM engines: ``st.cache_resource`` keyed by registry folder, name and checksum, so a
  model loads once per process and a re-registered file is never served stale.
- Results (predictions and CAMs): ``st.cache_data(max_entries=...)`` keyed by image SHA-256,
  model, method and target; heatmaps are kept at display size (at most :data:`DISPLAY_SIDE`).
- Decoded uploads: a small LRU per browser session (uploads are private to a session).
- Nothing here imports TensorFlow at import time.

Session-state keys are prefixed with their page (``review_``, ``models_``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import streamlit as st

from cxr_core.config import get_settings
from cxr_core.errors import CXRError
from cxr_core.models.manifest import READY, ModelEntry, list_models
from cxr_core.models.zoo import DEFAULT_CLASSES, SPECS

# =================================================================================================
# Shared by every page
# =================================================================================================

BANNER = (
    "**Research tool.** Model scores are not diagnoses: they are the output of experimental classifiers, "
    "shown to help reviewers study how the models behave. Do not use them for patient care."
)

#: Longest side of images and heatmaps as shown on screen (downloads use the original size).
DISPLAY_SIDE = 1024
THUMB_SIDE = 160


def model_output_allowed(image_sha: str, pixels: np.ndarray | None = None) -> tuple[bool, str]:
    """Whether model scores and heatmaps may be shown for this image, and if not, why.

    The single gate every page calls before showing ANY probability or heatmap (for one model
    or in the comparison). It asks :mod:`cxr_core.safety.blinding` about the reader chosen on the
    annotate page (:data:`ANNOTATE_READER`): an image pending in one of their blind sessions
    answers ``(False, reason)``; with nobody chosen, images pending for anyone stay hidden.
    If the annotation database cannot be asked, the output stays hidden (fails closed).
    With ``pixels`` (an uploaded film), a near-copy of a pending film is hidden too.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from cxr_core import storage

    from cxr_core.safety import blinding

    name = current_reader_name()
    try:
        with reading() as s:
            reader = storage.get_reader(s, name) if name else None
            decision = blinding.model_output_decision(s, reader.id if reader else None, image_sha, pixels)
    except (CXRError, SQLAlchemyError) as err:
        return False, f"Model output hidden: the annotation database could not be checked for blind readings ({err})."
    return decision.allowed, decision.reason


def registry() -> list[ModelEntry]:
    """Every registered model with its status (cheap: cards are read, files hashed once per mtime)."""
    return list_models()


def ready_models(entries: list[ModelEntry]) -> list[ModelEntry]:
    return [e for e in entries if e.ready and e.card is not None]


def missing_architectures(entries: list[ModelEntry]) -> list[tuple[str, str]]:
    """``(display name, how to get it)`` for each zoo architecture with no ready model registered."""
    have = {e.card.architecture.lower() for e in ready_models(entries)}
    out = []
    for arch, spec in SPECS.items():
        if arch not in have:
            out.append((spec.display_name, (
                f"train it: `python -m cxr_core train --arch {arch} --data DIR --name {arch}` "
                f"(DIR holds train/val/test folders per class), or register a trained file: "
                f"`python -m cxr_core import-model FILE.keras --name {arch} --arch {arch}`"
            )))
    return out


def _weights_key() -> str:
    return str(get_settings().weights_dir.resolve())


@st.cache_resource(max_entries=8, show_spinner="Loading the model (once per server)...")
def _loaded_model(weights_dir: str, name: str, sha256: str):
    from cxr_core.models.manifest import load_model
    from cxr_core.models.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()
    return load_model(name, weights_dir)


def loaded_model(entry: ModelEntry):
    """The verified Keras model of a ready registry entry, loaded once per process."""
    return _loaded_model(_weights_key(), entry.name, entry.card.sha256)


@st.cache_resource(max_entries=8, show_spinner="Preparing heatmaps for this model...")
def _cam_engine(weights_dir: str, name: str, sha256: str):
    from cxr_core.explain.cam import CamEngine, CamUnavailableError

    loaded = _loaded_model(weights_dir, name, sha256)
    try:
        return CamEngine.from_loaded(loaded), ""
    except CamUnavailableError as exc:  # cached too: the check is not repeated on every rerun
        return None, str(exc)


# =================================================================================================
# Review page
# =================================================================================================

REVIEW_UPLOADS = "review_uploads"
REVIEW_SAMPLES = "review_samples"
REVIEW_SELECTED = "review_selected"
REVIEW_MODEL = "review_model"
REVIEW_METHOD = "review_method"
REVIEW_OPACITY = "review_opacity"
REVIEW_COLORMAP = "review_colormap"
REVIEW_VIEW = "review_view"
REVIEW_COMPARE = "review_compare"
REVIEW_DECODED = "review_decoded"  # session LRU of decoded X-rays
REVIEW_OUTLINE = "review_outline"  # checkbox: draw the Otsu outline over the overlay
REVIEW_ZOOM = "review_zoom"  # 1, 2 or 4 (cxr_core.explain.overlay.ZOOMS)
REVIEW_ZOOM_ROW = "review_zoom_row"  # zoom centre, percent of the height from the top
REVIEW_ZOOM_COL = "review_zoom_col"  # zoom centre, percent of the width from the left


def review_target_key(model_name: str) -> str:
    """Per-model key of the target-class picker (each model has its own classes)."""
    return f"review_target::{model_name}"


METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
VIEWS = ("Overlay", "Side by side", "Original")
PREDICTED = "__predicted__"  # target picker value: explain the model's top class
DECODED_LRU = 16
#: Chest films are roughly square (real ones measured 1.00 to 1.36); past this, warn.
MAX_CHEST_ASPECT = 1.45


@dataclass(frozen=True)
class Item:
    """One uploaded or sample file in the review list: decoded, or the reason it cannot be."""

    key: str
    name: str
    xray: object | None = None  # cxr_core.io.imaging.XRay
    error: str = ""
    display: np.ndarray | None = None  # (h, w) float32, longest side <= DISPLAY_SIDE
    thumb: np.ndarray | None = None  # (h, w) uint8, longest side <= THUMB_SIDE
    attribution: str = ""


def _shrink(pixels: np.ndarray, side: int) -> np.ndarray:
    import cv2

    h, w = pixels.shape
    scale = side / max(h, w)
    if scale >= 1:
        return pixels
    return cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _decode(key: str, name: str, data: bytes, attribution: str = "") -> Item:
    """Decode through ``cxr_core.io.imaging``, remembering the last :data:`DECODED_LRU` files of this session."""
    from cxr_core.io.imaging import load_xray

    lru: OrderedDict = st.session_state.setdefault(REVIEW_DECODED, OrderedDict())
    if key in lru:
        lru.move_to_end(key)
        return lru[key]
    try:
        xray = load_xray(data, name)
    except CXRError as exc:
        item = Item(key, name, error=str(exc), attribution=attribution)
    else:
        display = _shrink(xray.pixels, DISPLAY_SIDE)
        thumb = (np.clip(_shrink(display, THUMB_SIDE), 0, 1) * 255).astype(np.uint8)
        item = Item(key, name, xray, display=display, thumb=thumb, attribution=attribution)
    lru[key] = item
    while len(lru) > DECODED_LRU:
        lru.popitem(last=False)
    return item


def upload_item(uploaded) -> Item:
    """An ``st.file_uploader`` file as a review item (errors kept as the item's message)."""
    return _decode(f"upload:{uploaded.file_id}:{uploaded.name}", uploaded.name, uploaded.getvalue())


def list_samples() -> list[dict]:
    """Bundled samples from ``data/samples/samples.json`` ({file, label, source, license, attribution}); [] if none."""
    folder = get_settings().samples_dir
    try:
        entries = json.loads((folder / "samples.json").read_text())
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict) and (folder / str(e.get("file", ""))).is_file()]


def sample_item(sample: dict) -> Item:
    path = get_settings().samples_dir / sample["file"]
    credit = "; ".join(str(sample[k]) for k in ("source", "license", "attribution") if sample.get(k))
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Item(f"sample:{sample['file']}", sample["file"], error=f"cannot read sample {path}: {exc}")
    return _decode(f"sample:{sample['file']}", sample["file"], data, credit)


@dataclass(frozen=True)
class Analysis:
    """One model's answer for one image: scores always, a heatmap when the model allows one.

    ``cam`` is a :class:`cxr_core.explain.cam.CamResult` whose ``heatmap`` is at display size (the
    ``grid`` upsampled the way ``cxr_core.explain.cam`` does); None with ``cam_error`` when unavailable.
    """

    prediction: object  # cxr_core.models.predict.Prediction
    cam: object | None
    cam_error: str = ""


@st.cache_data(max_entries=64, show_spinner="Running the model...")
def _analyse(weights_dir: str, name: str, sha256: str, image_sha: str, method: str, target: str | None,
             display_shape: tuple[int, int], _xray) -> Analysis:
    from cxr_core.explain.binarize import normalize, upsample
    from cxr_core.models.predict import predict_loaded

    engine, reason = _cam_engine(weights_dir, name, sha256)
    if engine is None:
        return Analysis(predict_loaded(_loaded_model(weights_dir, name, sha256), [_xray])[0], None, reason)
    result = engine.run([_xray], method=method, target=target)[0]
    heatmap = (np.zeros(display_shape, np.float32) if result.all_zero
               else normalize(upsample(result.grid, display_shape)))
    return Analysis(result.prediction, replace(result, heatmap=heatmap))


def analyse(entry: ModelEntry, item: Item, method: str, target: str | None) -> Analysis:
    """Scores and heatmap of ``entry``'s model for ``item``; cached by image, model, method and target."""
    return _analyse(_weights_key(), entry.name, entry.card.sha256, item.xray.sha256, method, target,
                    tuple(item.display.shape), item.xray)


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
    """The downloadable JSON: the CLI's fields (file, model, scores, cam, ood screening) plus the image's SHA-256."""
    body = analysis.cam.to_dict() if analysis.cam is not None else analysis.prediction.to_dict()
    record = {"file": item.name, "model": entry.name, **body, "image_sha256": item.xray.sha256}
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


@st.cache_data(max_entries=64, show_spinner="Checking that this looks like a chest X-ray...")
def _screen(weights_dir: str, name: str, sha256: str, image_sha: str, _xray):
    from cxr_core.safety.screening import screener

    return screener(_loaded_model(weights_dir, name, sha256), weights_dir).screen([_xray])[0]


def screen_item(entry: ModelEntry, item: Item):
    """:func:`cxr_core.safety.screening.screen` of ``entry``'s model for ``item`` (an ``OODDecision``); cached."""
    return _screen(_weights_key(), entry.name, entry.card.sha256, item.xray.sha256, item.xray)


def refusal_text(decision) -> str:
    """The page's refusal: the CLI's sentence, then each reason as a bullet with its measured figures."""
    from cxr_core.safety.screening import REFUSAL, refusal_lines

    return f"**{REFUSAL[0].upper() + REFUSAL[1:]}.** Model scores and heatmaps are not shown.\n\n" + "\n".join(
        f"- {r}" + (f" *({d})*" if d else "") for r, d in refusal_lines(decision))


def ood_override(entry: ModelEntry, item: Item, decision) -> dict:
    """Record that the expert chose to see scores for a refused input; logged once per model and image per session."""
    from cxr_core.safety.screening import decision_record, override_record

    logged: set = st.session_state.setdefault(REVIEW_OVERRIDES_LOGGED, set())
    key = (entry.name, item.xray.sha256)
    if key in logged:
        return {**decision_record(decision), "overridden": True, "by": current_reader_name(), "where": "review page"}
    logged.add(key)
    return override_record(decision, model=entry.name, image=f"{item.name} (sha256 {item.xray.sha256[:16]})",
                           where="review page", by=current_reader_name())


def review_warnings(item: Item, entry: ModelEntry) -> list[str]:
    """What a reader should know before reading this model's scores for this image."""
    card, xray = entry.card, item.xray
    notes = []
    if card.demo:
        notes.append(f"**{entry.name} is a demonstration model** ({card.intended_use}). "
                     "Its scores show how the workflow looks, not what the film shows.")
    missing = [c for c in DEFAULT_CLASSES if c not in card.classes]
    if missing:
        notes.append(f"This model has no output for **{', '.join(missing)}**: it can neither flag nor rule out "
                     f"{' or '.join(missing)}, and its scores are shared among {', '.join(card.classes)} only.")
    h, w = xray.shape
    if min(h, w) < card.input_size:
        notes.append(f"The image is small ({w}x{h} pixels) for a chest film; it is enlarged to the model's "
                     f"{card.input_size}x{card.input_size} input, so fine detail is not there to be seen.")
    aspect = max(h, w) / min(h, w)
    if aspect > MAX_CHEST_ASPECT:
        notes.append(f"The image is oddly shaped for a chest film (aspect ratio {aspect:.2f}); the model squeezes "
                     f"it to a square, which distorts anatomy. Is it cropped, or not a chest film?")
    if xray.was_color:
        notes.append("The file was in colour and has been converted to grey; X-rays are normally grayscale.")
    notes.extend(xray.warnings)
    return notes


@st.cache_data(max_entries=256, show_spinner="Scoring the films...")
def _predict(weights_dir: str, name: str, sha256: str, image_sha: str, _xray):
    from cxr_core.models.predict import predict_loaded

    return predict_loaded(_loaded_model(weights_dir, name, sha256), [_xray])[0]


def film_label(item: Item) -> str:
    """A film's name in exports: ``film-`` and the first 8 hex digits of its pixel SHA-256.

    Never the file name: upload names often carry a patient's name or record number.
    """
    return f"film-{item.xray.sha256[:8]}"


def plain_text(note: str) -> str:
    """A page note without its Markdown emphasis, for a table cell or CSV."""
    return note.replace("**", "")


@dataclass(frozen=True)
class SummaryRow:
    """One film of a batch, as the review page's summary table and its CSV show it.

    ``refused`` is "yes" (screened out as not a frontal chest X-ray), "no", or "not checked"
    (model output hidden, or the model could not run); ``reason`` says why.
    """

    film: str  # film_label(item): the only film name that leaves the page
    name: str  # the file name, shown on the page only
    top_class: str = ""
    score: float | None = None  # top model score in [0, 1]
    refused: str = "no"
    reason: str = ""
    warnings: tuple[str, ...] = ()

    def page_row(self) -> dict:
        return {"Film": self.film, "File": self.name, "Top model score": self.top_class,
                "Score (%)": None if self.score is None else round(100 * self.score, 1), "Refused": self.refused,
                "Reason": self.reason, "Warnings": len(self.warnings), "Warning details": " | ".join(self.warnings)}

    def csv_row(self, model: str) -> dict:
        return {"film": self.film, "model": model, "top_class": self.top_class,
                "top_score_percent": "" if self.score is None else f"{100 * self.score:.1f}",
                "refused": self.refused, "reason": self.reason, "warnings_count": len(self.warnings),
                "warnings": " | ".join(self.warnings)}


def review_summary(items: list[Item], entry: ModelEntry) -> list[SummaryRow]:
    """Each readable film's top model score, refusal and warnings under ``entry``'s model (cached per film).

    Follows the page's own path: the blinding gate first, then screening, then scores; a film the
    gate hides or the screen refuses gets no score.
    """
    rows = []
    for item in items:
        base = {"film": film_label(item), "name": item.name,
                "warnings": tuple(plain_text(n) for n in review_warnings(item, entry))}
        allowed, reason = model_output_allowed(item.xray.sha256, item.xray.pixels)
        if not allowed:
            rows.append(SummaryRow(**base, refused="not checked", reason=reason))
            continue
        try:
            decision = screen_item(entry, item)
            if not decision.ok:
                rows.append(SummaryRow(**base, refused="yes", reason="does not look like a frontal chest X-ray: "
                                       + "; ".join(decision.reasons)))
                continue
            pred = _predict(_weights_key(), entry.name, entry.card.sha256, item.xray.sha256, item.xray)
        except CXRError as exc:
            rows.append(SummaryRow(**base, refused="not checked", reason=f"{entry.name} could not be run: {exc}"))
            continue
        rows.append(SummaryRow(**base, top_class=pred.predicted, score=float(pred.confidence)))
    return rows


DICOM_FIELDS = (
    ("modality", "Modality"), ("view_position", "View"), ("body_part", "Body part"),
    ("photometric_interpretation", "Photometric interpretation"), ("manufacturer", "Manufacturer"),
)


def image_facts(item: Item) -> list[tuple[str, str]]:
    """(label, value) rows for the image panel; DICOM files add their kept, non-identifying metadata."""
    xray = item.xray
    meta = xray.metadata
    rows = [("File", item.name), ("Format", xray.source_format.upper()),
            ("Size", f"{meta.get('width')} x {meta.get('height')} pixels"), ("Bit depth", str(xray.bit_depth))]
    for key, label in DICOM_FIELDS:
        if meta.get(key):
            rows.append((label, str(meta[key])))
    if meta.get("pixel_spacing_mm"):
        rows.append(("Pixel spacing", " x ".join(f"{v:g}" for v in meta["pixel_spacing_mm"]) + " mm"))
    rows.append(("Image SHA-256", xray.sha256[:16] + "..."))
    if item.attribution:
        rows.append(("Source", item.attribution))
    return rows


# =================================================================================================
# Models page
# =================================================================================================

MODELS_PER_CLASS = "models_per_class"  # toggle: per-class rows in the metrics table


def checksum_line(entry: ModelEntry) -> tuple[bool, str]:
    """``(ok, sentence)`` for a model's file check, as the models page shows it."""
    if entry.status == READY:
        return True, f"Checksum verified: model.keras matches the SHA-256 in its card ({entry.card.sha256[:16]}...)."
    return False, f"{entry.status.capitalize()}: {entry.message}. This model cannot be used until this is fixed."


# =================================================================================================
# Annotate and Sessions pages (blind expert annotation; owned by the annotation work, issue 6)
# =================================================================================================
# Who is using the app is the annotate page's reader picker, kept for the whole browser session
# (and in the URL, so a refresh keeps it); model_output_allowed() above reads it on every page.

ANNOTATE_READER = "annotate_reader"  # reader name, or None when nobody is chosen (blinding is then stricter)
ANNOTATE_SESSION = "annotate_session"  # session name
ANNOTATE_ERROR = "annotate_error"  # one-run message: a button's save that did not happen
ANNOTATE_SHOWN = "annotate_shown"  # (mode, session, reader, sha, version) whose first display is recorded
ANNOTATE_FLASH = "annotate_flash"  # one-run message after a submit
ANNOTATE_TOOL = "annotate_tool"
ANNOTATE_FINDING = "annotate_finding"
ANNOTATE_LEVEL = "annotate_level"
ANNOTATE_WINDOW = "annotate_window"
ANNOTATE_DRAWINGS = "annotate_drawings"  # per reading: cxr_core.annotation.reading.Reading

SESSIONS_NAME = "sessions_name"
SESSIONS_BLIND = "sessions_blind"
SESSIONS_SOURCE = "sessions_source"
SESSIONS_UPLOADS = "sessions_uploads"
SESSIONS_SAMPLES = "sessions_samples"
SESSIONS_FOLDER = "sessions_folder"
SESSIONS_READERS = "sessions_readers"
SESSIONS_SHUFFLE = "sessions_shuffle"
SESSIONS_ADMIN = "sessions_admin"
SESSIONS_NEW_READER = "sessions_new_reader"
SESSIONS_NEW_ROLE = "sessions_new_role"
SESSIONS_FLASH = "sessions_flash"
SESSIONS_SCREENED = "sessions_screened"  # cxr_core.safety.intake.VerdictCache of this browser session


def sessions_keep_key(ident: str) -> str:
    """Key of the "keep this flagged film" checkbox of one intake file (``IntakeFile.ident``)."""
    return f"sessions_keep::{ident}"


@dataclass(frozen=True)
class IntakeScreening:
    """How the sessions page screens films: the review page's function for the default model, or the image checks.

    ``tag`` names the screener in the verdict cache; ``problem`` says why the default model's detector
    is not used when it should be (the page shows it as a warning).
    """

    screen: object  # XRay -> OODDecision
    tag: str
    screened_by: str
    description: str
    problem: str = ""


_CHECKS = ("image checks (colour, blank or noisy images, shape, grey levels, the chest's layout, "
           "DICOM body part and view)")


def sessions_screening() -> IntakeScreening:
    """The screening of the review page's default model (the demo model when installed), as intake uses it.

    A model with an out-of-distribution detector screens through :func:`screen_item`'s cached
    ``_screen`` (same function, same cache as the review page); without one, or with no model,
    :class:`cxr_core.safety.screening.Screener` without a detector runs the image checks alone, which is
    what the model's screener would do.
    """
    from cxr_core.safety.screening import Screener, screener

    checks_only = Screener(None)
    ready = ready_models(registry())
    if not ready:
        return IntakeScreening(lambda x: checks_only.screen([x])[0], "image-checks", "image checks",
                               f"Screened by the {_CHECKS} alone: no model is installed, so no model's "
                               "out-of-distribution detector can be asked.")
    entry = ready[0]  # the review page's default: the registry lists demo models first
    role = "the demo model" if entry.card.demo else "the review page's default model"
    if not entry.card.extra.get("ood"):
        return IntakeScreening(lambda x: checks_only.screen([x])[0], "image-checks", "image checks",
                               f"Screened by the {_CHECKS} alone: **{entry.name}** ({role}) has no "
                               "out-of-distribution detector.")
    try:
        screener(loaded_model(entry), _weights_key())  # load and verify the detector once, here
    except CXRError as err:
        return IntakeScreening(lambda x: checks_only.screen([x])[0], "image-checks", "image checks",
                               f"Screened by the {_CHECKS} alone.",
                               f"{entry.name}'s out-of-distribution detector could not be used ({err}); "
                               "films are screened by the image checks alone.")
    weights, name, sha = _weights_key(), entry.name, entry.card.sha256
    return IntakeScreening(lambda x: _screen(weights, name, sha, x.sha256, x), f"{name}:{sha}",
                           f"{name} (image checks and out-of-distribution detector)",
                           f"Screened as the review page screens a film: the {_CHECKS}, and the out-of-distribution "
                           f"detector of **{name}** ({role}), which compares each film with its training films.")


def sessions_screen(files, screening: IntakeScreening, progress=None) -> list:
    """:func:`cxr_core.safety.intake.screen_files` with this browser session's verdict cache (nothing decoded twice)."""
    from cxr_core.safety.intake import VerdictCache, screen_files

    cache = st.session_state.setdefault(SESSIONS_SCREENED, VerdictCache())
    return screen_files(files, screening.screen, cache=cache, tag=screening.tag, progress=progress)

#: Pen width of the annotation canvas, in CSS pixels (kept on screen whatever the zoom).
CANVAS_STROKE = 3


def reading_key(kind: str, session_id: int, reader_id: int, image_sha: str) -> str:
    """Session-state key of a per-reading widget (diagnosis, confidence, comment, reveal...)."""
    return f"annotate_{kind}::{session_id}:{reader_id}:{image_sha}"


def annotate_image_key(session_id: int, reader_id: int) -> str:
    """Key of the queue-position picker: one per reader and session, so a switch never carries a stale choice."""
    return f"annotate_image::{session_id}:{reader_id}"


def annotate_canvas_key(session_id: int, reader_id: int, image_sha: str, generation: int = 0) -> str:
    """Key of the drawing canvas for one reading; a new generation (after "Clear all marks") remounts it empty."""
    return f"annotate_canvas::{session_id}:{reader_id}:{image_sha}:{generation}"


@st.cache_resource(max_entries=4, show_spinner=False)
def _db(url: str):
    from cxr_core import storage

    return storage.session_factory(storage.make_engine(url))


def reading(factory=None):
    """A read-only transaction on the annotation database: it takes no write lock, so a long read never
    blocks a reader's Submit (``with ui.reading() as s:``). Writes use ``with ui.db().begin() as s:``."""
    from cxr_core.storage import read_transaction

    return read_transaction(factory if factory is not None else db())


def db():
    """The cached ``sessionmaker`` of the annotation database (``CXR_DATABASE_URL``); frame ``with db().begin() as s``."""
    return _db(get_settings().database_url)


def current_reader_name() -> str | None:
    """The reader chosen on the annotate page in this browser session, or None."""
    return st.session_state.get(ANNOTATE_READER) or None


@st.cache_resource(max_entries=8, show_spinner=False)
def _stored_item(url: str, image_sha: str) -> Item:
    from cxr_core import storage
    from cxr_core.io.imaging import XRay

    with reading(_db(url)) as s:
        image = storage.get_image(s, image_sha)
        if image is None:  # raised, so not cached
            raise CXRError(f"image {image_sha[:12]}... is not in the annotation database")
        pixels, name, depth = storage.image_pixels(image), image.original_name or f"image {image_sha[:12]}", image.bit_depth
    xray = XRay(pixels, "png", depth, image_sha, name, {"height": pixels.shape[0], "width": pixels.shape[1]})
    display = _shrink(pixels, DISPLAY_SIDE)
    return Item(f"db:{image_sha}", name, xray, display=display,
                thumb=(np.clip(_shrink(display, THUMB_SIDE), 0, 1) * 255).astype(np.uint8))


def stored_item(image_sha: str) -> Item:
    """A stored image as a review item (for the canvas and for revealing the model), loaded once per server.

    Images are keyed by pixel hash and never change, so one copy serves every browser session.
    """
    return _stored_item(get_settings().database_url, image_sha)


# =================================================================================================
# Agreement page (heatmap versus expert marks; owned by the agreement work, issue 7)
# =================================================================================================
# Readings, heatmaps and threshold-free metrics are cached per session + model + method (and the
# session's fingerprint, which changes with every new reading or stored result), so moving the
# threshold or rule recomputes only the mask metrics (score_batch). Images still pending in the
# current reader's blind readings never enter these caches: agreement_view() asks blinding first.

AGREEMENT_SESSION = "agreement_session"
AGREEMENT_MODELS = "agreement_models"
AGREEMENT_METHOD = "agreement_method"
AGREEMENT_THRESHOLD = "agreement_threshold"  # "otsu", "fixed" or "top"
AGREEMENT_FIXED = "agreement_fixed"
AGREEMENT_TOP = "agreement_top"
AGREEMENT_RULE = "agreement_rule"
AGREEMENT_CLASSES = "agreement_classes"
AGREEMENT_READERS = "agreement_readers"
AGREEMENT_CONSENSUS = "agreement_consensus"  # consensus pseudo-readers scored as extra readers (none by default)
AGREEMENT_METRIC = "agreement_metric"  # metric of the distribution chart
AGREEMENT_GALLERY_MODEL = "agreement_gallery_model"
AGREEMENT_SORT = "agreement_sort"
AGREEMENT_PAGE = "agreement_page"

AGREEMENT_METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
THRESHOLD_KINDS = {"otsu": "Otsu (CheXlocalize default)", "fixed": "Fixed threshold", "top": "Top k% of pixels"}
RULE_LABELS = {"true_positive_only": "True positives only (CheXlocalize)", "full": "Full (one-sided empty counts 0)"}
METRIC_LABELS = {"iou": "IoU", "dice": "Dice", "hit": "Hit (pointing game)", "mass": "Relevance mass",
                 "rank": "Relevance rank", "auc": "Pixel AUC"}
GALLERY_PAGE = 12
GALLERY_SIDE = 384


@dataclass(frozen=True)
class AgreementView:
    """What the current reader may see of a session: its id, cache fingerprint and hidden images."""

    session_id: int
    fingerprint: str
    hidden: tuple[str, ...]  # session images still pending in the reader's blind readings
    reader: str | None
    role: str | None


def agreement_sessions() -> list[tuple[str, bool]]:
    """``(name, blind)`` of every reading session, oldest first."""
    from cxr_core import storage

    with reading() as s:
        return [(x.name, bool(x.blind)) for x in storage.list_sessions(s)]


def agreement_view(session_name: str) -> AgreementView:
    """The blind check for a whole session: the list form of :func:`model_output_allowed`.

    Same reader (:func:`current_reader_name`), same rule (:func:`cxr_core.safety.blinding.hidden_images`;
    with nobody chosen, images pending for anyone are hidden). Raises ``CXRError`` when the
    database cannot be asked, so the page shows nothing rather than everything (fails closed).
    """
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from cxr_core import storage

    from cxr_core.agreement import session_scores

    name = current_reader_name()
    try:
        with reading() as s:
            session = storage.get_session(s, session_name)
            if session is None:
                raise CXRError(f"no reading session named {session_name!r}")
            reader = storage.get_reader(s, name) if name else None
            shas = set(s.scalars(select(storage.SessionImage.image_sha)
                                 .where(storage.SessionImage.session_id == session.id)))
            hidden = session_scores.hidden_for(s, reader.name if reader else None) & shas
            return AgreementView(session.id, session_scores.fingerprint(s, session.id), tuple(sorted(hidden)),
                                 reader.name if reader else None, reader.role if reader else None)
    except SQLAlchemyError as err:
        raise CXRError(f"the annotation database could not be checked for blind readings ({err})") from err


@st.cache_data(max_entries=8, show_spinner="Reading the session's expert marks...")
def _agreement_data(url: str, session_name: str, fingerprint: str, hidden: tuple[str, ...]):
    from cxr_core.agreement import session_scores

    with reading(_db(url)) as s:
        return session_scores.read_session(s, session_name, hidden=hidden)


def agreement_data(session_name: str, view: AgreementView):
    """The session's visible readings with their masks (:class:`cxr_core.agreement.session_scores.SessionData`)."""
    return _agreement_data(get_settings().database_url, session_name, view.fingerprint, view.hidden)


def agreement_models() -> dict[str, object]:
    """Ready registry models as :class:`cxr_core.agreement.session_scores.ModelRef`, by name."""
    from cxr_core.agreement.session_scores import ModelRef

    return {e.name: ModelRef.from_card(e.card) for e in ready_models(registry())}


def agreement_missing(data, model, method: str) -> int:
    """How many heatmaps (``method`` and the random baseline) the readings still lack for ``model``."""
    from cxr_core.agreement import session_scores

    with reading() as s:
        return len(session_scores.missing_jobs(s, data, model, (method, session_scores.BASELINE)))


def agreement_compute(data, model, method: str, progress=None) -> int:
    """Compute and store the missing heatmaps with the cached CAM engine; how many were stored."""
    from cxr_core.agreement import session_scores

    def engine():
        found, reason = _cam_engine(_weights_key(), model.name, model.checksum)
        if found is None:
            raise CXRError(reason)
        return found

    return session_scores.compute_missing(db(), data, model, engine, method, progress=progress)


@st.cache_data(max_entries=16, show_spinner="Loading heatmaps...")
def _agreement_pairs(url: str, session_name: str, fingerprint: str, hidden: tuple[str, ...], model, method: str):
    from cxr_core.agreement import session_scores

    data = _agreement_data(url, session_name, fingerprint, hidden)
    with reading(_db(url)) as s:
        pairs = session_scores.load_pairs(s, data, model, method)
    return pairs, session_scores.threshold_free(pairs)


def agreement_pairs(session_name: str, view: AgreementView, model, method: str):
    """``(PairSet, threshold-free metrics)`` of one model × method, cached per session + model + method."""
    return _agreement_pairs(get_settings().database_url, session_name, view.fingerprint, view.hidden, model, method)


def threshold_spec(kind: str, fixed: float, top: float) -> str:
    """The :class:`cxr_core.explain.binarize.Threshold` text for the page's threshold controls."""
    if kind == "fixed":
        return f"{fixed:g}"
    if kind == "top":
        return f"top{top:g}%"
    return "otsu"


def agreement_scores(session_name: str, view: AgreementView, models, method: str, threshold: str, rule: str):
    """Scores of each model's ``method`` and random-baseline heatmaps, and the PairSets they came from."""
    from cxr_core.agreement import session_scores

    pairsets, scores = [], []
    for model in models:
        for m in (method, session_scores.BASELINE):
            pairs, free = agreement_pairs(session_name, view, model, m)
            pairsets.append(pairs)
            scores.extend(session_scores.score_pairs(pairs, threshold, rule, free=free))
    return pairsets, scores


@st.cache_data(max_entries=256, show_spinner=False)
def _gallery_picture(url: str, image_sha: str, reader: str, model: str, method: str, threshold: str,
                     fingerprint: str, _score, _heatmap, _mask) -> np.ndarray:
    from cxr_core.agreement.reports import make_case, render_case

    case = make_case(_score, stored_item(image_sha).xray.pixels, _mask, _heatmap)
    from cxr_core.explain.overlay import fit_within

    return fit_within(render_case(case.image, case.expert, case.predicted), GALLERY_SIDE)


def gallery_picture(view: AgreementView, pairs, score) -> np.ndarray:
    """The X-ray with the expert's (blue) and the binarised heatmap's (orange) outlines, at gallery size."""
    i = next(i for i, k in enumerate(pairs.keys) if k.image_id == score.image_id and k.reader == score.reader)
    heatmap, mask = pairs.pair(i)
    return _gallery_picture(get_settings().database_url, pairs.keys[i].image_sha, score.reader, score.model,
                            score.method, score.threshold, view.fingerprint, score, heatmap, mask)


def format_interval(iv, digits: int = 3) -> str:
    """``mean`` and ``[lo, hi]`` of an :class:`cxr_core.agreement.Interval`, dashes where undefined."""
    import math

    if iv is None or not math.isfinite(iv.mean):
        return "–"
    return f"{iv.mean:.{digits}f} [{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]"


def distribution_figure(scores, metric: str):
    """Box plots of one metric per class for each model × method, the random baseline apart in grey (as the
    HTML report: :func:`cxr_core.agreement.reports.distribution_figure`)."""
    from cxr_core.agreement.reports import distribution_figure as figure

    return figure(scores, metric)


def format_ci(iv, digits: int = 3) -> str:
    """``[lo, hi]`` of an interval, a dash where undefined."""
    import math

    if iv is None or not math.isfinite(iv.mean):
        return "–"
    return f"[{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]"


def interval(values):
    """Mean and seeded 1000-replicate bootstrap interval of ``values`` as an ``agreement.Interval``."""
    from cxr_core.agreement import Interval, bootstrap_ci

    arr = np.asarray(values, float)
    return Interval(*bootstrap_ci(arr), int(np.isfinite(arr).sum()))


def agreement_reader_pairs(data, readers, rule: str):
    """Reader-versus-reader IoU of the session's visible readings by ``readers``."""
    from cxr_core.agreement.session_scores import reader_pairs

    return reader_pairs(data, set(readers), rule=rule)


def agreement_pixels(image_sha: str) -> np.ndarray:
    """A stored image's pixels at original size (for report galleries), loaded once per server."""
    return stored_item(image_sha).xray.pixels


def agreement_filter_key(kind: str, session_name: str, options) -> str:
    """Key of a class or reader filter: one per session and set of options, so new options start all selected."""
    return f"{kind}::{session_name}::{'|'.join(options)}"


def agreement_times(data) -> list[dict]:
    """Time per case of the session (median, IQR per reader and for all readers) as plain rows."""
    from cxr_core.agreement.session_report import time_rows

    return time_rows(data)


def agreement_export(fmt: str, data, pairsets, scores, rule: str) -> str:
    """The page's download in ``fmt`` (csv, json, html, coco) of exactly the scores it shows."""
    from cxr_core.agreement import reports
    from cxr_core.agreement.session_report import build_report, to_coco

    if fmt == "coco":
        return to_coco(data, pairsets, scores)
    report = build_report(data, pairsets, scores, pixels=None if fmt == "csv" else agreement_pixels, rule=rule)
    if fmt == "csv":
        return reports.to_csv(report.scores, report.excluded)
    return reports.to_json(report) if fmt == "json" else reports.to_html(report)
