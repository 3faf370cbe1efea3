"""What every page shares: the banner, cached models, CAM engines and database, decoded films, the blind gate.

Rules:

- Models and CAM engines: ``st.cache_resource`` keyed by registry folder, name and checksum, so a
  model loads once per process and a re-registered file is never served stale.
- Results (predictions, screening and CAMs): ``st.cache_data(max_entries=...)`` keyed by image SHA-256,
  model, method and target; heatmaps are kept at display size (at most :data:`DISPLAY_SIDE`).
- Decoded uploads: a small LRU per browser session (uploads are private to a session).
- Nothing here imports TensorFlow at import time.

Who is using the app is the logged-in user (:func:`ui.auth.current_user`; users are the readers);
:func:`model_output_allowed` asks the blind gate about them on every page.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import streamlit as st

from cxr_core.agreement.figures import METHOD_LABELS as _FIGURE_LABELS
from cxr_core.config import get_settings
from cxr_core.errors import CXRError
from cxr_core.io.samples import list_samples  # noqa: F401  (re-exported: the samples' home is cxr_core.io.samples)
from cxr_core.models.manifest import ModelEntry, list_models

BANNER = (
    "**Research tool.** Model scores are not diagnoses: they are the output of experimental classifiers, "
    "shown to help reviewers study how the models behave. Do not use them for patient care."
)

#: Longest side of images and heatmaps as shown on screen (downloads use the original size).
DISPLAY_SIDE = 1024
THUMB_SIDE = 160
DECODED_LRU = 16
#: Largest film upload in MB: an uncompressed 16-bit film at Settings.max_pixels plus room for a DICOM header.
#: Film uploaders pass it as their own limit; the server's cap (.streamlit/config.toml) is the model uploader's.
FILM_UPLOAD_MB = -(-get_settings().max_pixels * 2 // 2**20) + 5
DECODED = "review_decoded"  # session LRU of decoded X-rays (the review page's key, kept for every page)
#: The heatmap methods a reader picks, labelled as every report labels them (the random baseline is not offered).
METHOD_LABELS = {m: _FIGURE_LABELS[m] for m in ("gradcam", "gradcam++")}


# --- the blind gate ------------------------------------------------------------------------------


def model_output_allowed(image_sha: str, pixels: np.ndarray | None = None) -> tuple[bool, str]:
    """Whether model scores and heatmaps may be shown for this image, and if not, why.

    The single gate every page calls before showing ANY probability or heatmap (for one model
    or in the comparison). It asks :mod:`cxr_core.safety.blinding` about the logged-in user
    (:func:`current_reader_name`): an image pending in one of their blind sessions answers
    ``(False, reason)``; with nobody logged in, images pending for anyone stay hidden.
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


# --- models and CAM engines ----------------------------------------------------------------------


def registry() -> list[ModelEntry]:
    """Every registered model with its status (cheap: cards are read, files hashed once per mtime)."""
    return list_models()


def ready_models(entries: list[ModelEntry]) -> list[ModelEntry]:
    """The entries whose file checks out and whose card was read."""
    return [e for e in entries if e.ready and e.card is not None]


def weights_key() -> str:
    """The registry folder as a cache key (absolute, so one folder is one key)."""
    return str(get_settings().weights_dir.resolve())


@st.cache_resource(max_entries=8, show_spinner="Loading the model (once per server)...")
def _loaded_model(weights_dir: str, name: str, sha256: str):
    from cxr_core.models.manifest import load_model
    from cxr_core.models.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()
    return load_model(name, weights_dir)


def loaded_model(entry: ModelEntry):
    """The verified Keras model of a ready registry entry, loaded once per process."""
    return _loaded_model(weights_key(), entry.name, entry.card.sha256)


def loaded_by_name(name: str, sha256: str):
    """:func:`loaded_model` from a model's name and file checksum (a ``ModelRef``'s ``name`` and ``checksum``)."""
    return _loaded_model(weights_key(), name, sha256)


@st.cache_resource(max_entries=8, show_spinner="Preparing heatmaps for this model...")
def cam_engine(weights_dir: str, name: str, sha256: str):
    """``(CamEngine, "")`` of a registered model, or ``(None, why not)``; built once per process."""
    from cxr_core.analysis import cam_engine as engine_of
    from cxr_core.explain.cam import CamUnavailableError

    loaded = _loaded_model(weights_dir, name, sha256)
    try:
        return engine_of(loaded), ""
    except CamUnavailableError as exc:  # cached too: the check is not repeated on every rerun
        return None, str(exc)


# --- films: decoded uploads, bundled samples, stored images ---------------------------------------


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

    lru: OrderedDict = st.session_state.setdefault(DECODED, OrderedDict())
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



def sample_item(sample: dict) -> Item:
    path = get_settings().samples_dir / sample["file"]
    credit = "; ".join(str(sample[k]) for k in ("source", "license", "attribution") if sample.get(k))
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Item(f"sample:{sample['file']}", sample["file"], error=f"cannot read sample {path}: {exc}")
    return _decode(f"sample:{sample['file']}", sample["file"], data, credit)


# --- the annotation database ---------------------------------------------------------------------


@st.cache_resource(max_entries=4, show_spinner=False)
def db_at(url: str):
    """The ``sessionmaker`` of the database at ``url``, one per process (never a Session: not thread-safe)."""
    from cxr_core import storage

    return storage.session_factory(storage.make_engine(url))


def reading(factory=None):
    """A read-only transaction on the annotation database: it takes no write lock, so a long read never
    blocks a reader's Submit (``with common.reading() as s:``). Writes use ``with common.db().begin() as s:``."""
    from cxr_core.storage import read_transaction

    return read_transaction(factory if factory is not None else db())


def db():
    """The cached ``sessionmaker`` of the annotation database (``CXR_DATABASE_URL``).

    Frame writes as ``with db().begin() as s``."""
    return db_at(get_settings().database_url)


def current_reader_name() -> str | None:
    """The logged-in user's name (users are the readers, so it keys the blind gate), or None.

    Never a name picked on a page or put in the URL: identity is the login (:func:`ui.auth.current_user`).
    """
    from ui import auth as ui_auth

    user = ui_auth.current_user()
    return user.name if user is not None else None


@st.cache_resource(max_entries=8, show_spinner=False)
def _stored_item(url: str, image_sha: str) -> Item:
    from cxr_core import storage
    from cxr_core.io.imaging import XRay

    with reading(db_at(url)) as s:
        image = storage.get_image(s, image_sha)
        if image is None:  # raised, so not cached
            raise CXRError(f"image {image_sha[:12]}... is not in the annotation database")
        pixels, depth = storage.image_pixels(image), image.bit_depth
        name = image.original_name or f"image {image_sha[:12]}"
    xray = XRay(pixels, "png", depth, image_sha, name, {"height": pixels.shape[0], "width": pixels.shape[1]})
    display = _shrink(pixels, DISPLAY_SIDE)
    return Item(f"db:{image_sha}", name, xray, display=display,
                thumb=(np.clip(_shrink(display, THUMB_SIDE), 0, 1) * 255).astype(np.uint8))


def stored_item(image_sha: str) -> Item:
    """A stored image as a review item (for the canvas and for revealing the model), loaded once per server.

    Images are keyed by pixel hash and never change, so one copy serves every browser session.
    """
    return _stored_item(get_settings().database_url, image_sha)


# --- cached model results ------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """One model's answer for one image, as a page shows it: :func:`cxr_core.analysis.analyse`'s, heatmap shrunk.

    ``film`` is the :class:`cxr_core.analysis.FilmAnalysis` (refusal with reasons and figures, warnings,
    scores) without its full-size heatmap. A refused film has no ``prediction`` and no ``cam``.
    ``cam`` is a :class:`cxr_core.explain.cam.CamResult` whose ``heatmap`` is at display size (the
    ``grid`` upsampled the way ``cxr_core.explain.cam`` does); None with ``cam_error`` when unavailable.
    """

    prediction: object | None  # cxr_core.models.predict.Prediction
    cam: object | None
    cam_error: str = ""
    film: object | None = None  # cxr_core.analysis.FilmAnalysis

    @property
    def refused(self) -> bool:
        return self.film is not None and self.film.refused


class _Decided:
    """A screener answering with a decision already made (the cached :func:`screen_cached`), so the
    analysis path does not measure the same film twice."""

    def __init__(self, decision):
        self.decision = decision

    def screen(self, xrays):
        return [self.decision for _ in xrays]


@st.cache_data(max_entries=64, show_spinner="Running the model...")
def _analyse(weights_dir: str, name: str, sha256: str, image_sha: str, method: str | None, target: str | None,
             display_shape: tuple[int, int], allow_ood: bool, _xray) -> Analysis:
    from cxr_core.analysis import analyse as analyse_film
    from cxr_core.explain.binarize import normalize, upsample

    engine, reason = cam_engine(weights_dir, name, sha256) if method is not None else (None, "")
    decided = _Decided(screen_cached(weights_dir, name, sha256, image_sha, _xray))
    result = analyse_film(_loaded_model(weights_dir, name, sha256), _xray, method=method if engine else None,
                          target=target, allow_ood=allow_ood, screener=decided, engine=engine)
    film = replace(result, cam=None)
    if not result.analysed or result.cam is None:
        return Analysis(result.prediction, None, reason, film)
    cam = result.cam
    heatmap = np.zeros(display_shape, np.float32) if cam.all_zero else normalize(upsample(cam.grid, display_shape))
    return Analysis(result.prediction, replace(cam, heatmap=heatmap), "", film)


def analyse(entry: ModelEntry, item: Item, method: str | None, target: str | None, *,
            allow_ood: bool = False) -> Analysis:
    """:func:`cxr_core.analysis.analyse` of ``entry``'s model for ``item`` (screen, warn, predict, explain);
    cached by image, model, method, target and override. ``method`` None: scores only."""
    return _analyse(weights_key(), entry.name, entry.card.sha256, item.xray.sha256, method, target,
                    tuple(item.display.shape), allow_ood, item.xray)


@st.cache_data(max_entries=64, show_spinner="Checking that this looks like a chest X-ray...")
def screen_cached(weights_dir: str, name: str, sha256: str, image_sha: str, _xray):
    """The ``OODDecision`` of one model's screener for one X-ray, cached by model and image SHA-256."""
    from cxr_core.safety.screening import screener

    return screener(_loaded_model(weights_dir, name, sha256), weights_dir).screen([_xray])[0]


def screen_item(entry: ModelEntry, item: Item):
    """:func:`cxr_core.safety.screening.screen` of ``entry``'s model for ``item`` (an ``OODDecision``); cached."""
    return screen_cached(weights_key(), entry.name, entry.card.sha256, item.xray.sha256, item.xray)


def refusal_text(refused) -> str:
    """The page's refusal: the CLI's sentence, then each reason as a bullet with its measured figures.

    ``refused``: a :class:`cxr_core.analysis.FilmAnalysis` (or :class:`~ui.common.Analysis`), or a bare
    screening decision (the sessions page's intake).
    """
    from cxr_core.safety.screening import REFUSAL, refusal_lines

    decision = getattr(getattr(refused, "film", None) or refused, "screening", refused)
    return f"**{REFUSAL[0].upper() + REFUSAL[1:]}.** Model scores and heatmaps are not shown.\n\n" + "\n".join(
        f"- {r}" + (f" *({d})*" if d else "") for r, d in refusal_lines(decision))
