"""What every page shares: the banner, cached models, CAM engines and database, decoded films, the blind gate.

Rules:

- Models and CAM engines: ``st.cache_resource`` keyed by registry folder, name and checksum, so a
  model loads once per process and a re-registered file is never served stale.
- Decoded films, results (predictions, screening and CAMs) and encoded pictures: one process-wide
  :class:`cxr_core.cache.ByteLRU` (:func:`results_cache`) bounded in bytes by ``CXR_CACHE_MB`` (default 512),
  keyed by file, image SHA-256, model, method and target; heatmaps are kept at display size (at most
  :data:`DISPLAY_SIDE`). Forty films can be clicked through without recomputation while they fit, and the
  cache never holds more than its budget (issue 15). Cached arrays are read-only.
- Streamlit's end-of-run Keras cleanup is switched off (:func:`keep_models_warm`, issue 17).
- Nothing here imports TensorFlow at import time.

Who is using the app is the logged-in user (:func:`ui.auth.current_user`; users are the readers);
:func:`model_output_allowed` asks the blind gate about them on every page.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass, replace

import numpy as np
import streamlit as st

from cxr_core.agreement.figures import METHOD_LABELS as _FIGURE_LABELS
from cxr_core.cache import ByteLRU, budget_from_env, freeze
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
#: Largest film upload in MB: an uncompressed 16-bit film at Settings.max_pixels plus room for a DICOM header.
#: Film uploaders pass it as their own limit; the server's cap (.streamlit/config.toml) is the model uploader's.
FILM_UPLOAD_MB = -(-get_settings().max_pixels * 2 // 2**20) + 5
#: The heatmap methods a reader picks, labelled as every report labels them (the random baseline is not offered).
METHOD_LABELS = {m: _FIGURE_LABELS[m] for m in ("gradcam", "gradcam++")}


# --- one byte-bounded cache for films, results and pictures ----------------------------------------

_CACHE: ByteLRU | None = None
_CACHE_LOCK = threading.Lock()


def results_cache() -> ByteLRU:
    """The process's cache of decoded films, analyses and encoded pictures, bounded by ``CXR_CACHE_MB``.

    One for every browser session (keys hold image SHA-256s or per-upload file ids), made on first use.
    """
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = ByteLRU(budget_from_env())
        return _CACHE


def reset_results_cache(budget_bytes: int | None = None) -> ByteLRU:
    """A new, empty :func:`results_cache` (``budget_bytes`` default: ``CXR_CACHE_MB`` now); for tests and admins."""
    global _CACHE
    with _CACHE_LOCK:
        _CACHE = ByteLRU(budget_from_env() if budget_bytes is None else budget_bytes)
        return _CACHE


def keep_models_warm() -> None:
    """Stop Streamlit from calling ``keras.backend.clear_session()`` after every script run.

    Streamlit (``script_runner._clean_problem_modules``) does it for scripts that build Keras models; this app
    only serves models kept in ``st.cache_resource``. Each call ran a full ``gc.collect()`` over TensorFlow's
    heap (0.7 s of one core, holding the GIL, on every click of every user) and emptied TensorFlow's kernel
    cache while other sessions' threads were using it. Matplotlib's figures are still closed as before.
    Idempotent; does nothing on a Streamlit without that hook.
    """
    from streamlit.runtime.scriptrunner import script_runner

    current = getattr(script_runner, "_clean_problem_modules", None)
    if current is None or getattr(current, "keeps_models_warm", False):
        return

    def clean_matplotlib_only() -> None:
        import sys

        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close("all")

    clean_matplotlib_only.keeps_models_warm = True
    script_runner._clean_problem_modules = clean_matplotlib_only


keep_models_warm()


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
    loaded = load_model(name, weights_dir)
    # TensorFlow and the model are hundreds of thousands of long-lived objects: move them out of the garbage
    # collector's view, so a full collection (any user's click may trigger one) does not walk them again.
    gc.collect()
    gc.freeze()
    return loaded


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
        engine = engine_of(loaded)
    except CamUnavailableError as exc:  # cached too: the check is not repeated on every rerun
        return None, str(exc)
    info = getattr(engine, "info", None)
    if info is not None:
        _ENGINES_BUILT[(weights_dir, name, sha256)] = (info.label, info.reason)
    return engine, ""


#: (label, reason) of each engine this server has built, by (registry folder, model name, file checksum).
_ENGINES_BUILT: dict[tuple[str, str, str], tuple[str, str]] = {}


def engine_built(entry: ModelEntry) -> tuple[str, str] | None:
    """``(label, reason)`` of the engine this server runs ``entry``'s model on (``("OpenVINO, float32", "")``),
    or None before the model has read its first film here (the engine is chosen then; nothing is loaded now)."""
    return _ENGINES_BUILT.get((weights_key(), entry.name, entry.card.sha256 if entry.card else ""))


# --- films: decoded uploads, bundled samples, stored images ---------------------------------------


@dataclass(frozen=True)
class Item:
    """One uploaded or sample file in the review list: decoded, or the reason it cannot be."""

    key: str
    name: str
    xray: object | None = None  # cxr_core.io.imaging.XRay
    error: str = ""
    display: np.ndarray | None = None  # (h, w) float32, longest side <= DISPLAY_SIDE, read-only
    thumb: np.ndarray | None = None  # (h, w) uint8, longest side <= THUMB_SIDE, read-only
    attribution: str = ""


def _shrink(pixels: np.ndarray, side: int) -> np.ndarray:
    import cv2

    h, w = pixels.shape
    scale = side / max(h, w)
    if scale >= 1:
        return pixels
    return cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _item(key: str, name: str, xray, attribution: str = "") -> Item:
    """A decoded film with its display copy and thumbnail (both read-only: the item is shared from the cache)."""
    display = _shrink(xray.pixels, DISPLAY_SIDE)
    if display is xray.pixels:
        display = display.copy()  # never freeze the film's own pixels: the caller may still own them
    thumb = (np.clip(_shrink(display, THUMB_SIDE), 0, 1) * 255).astype(np.uint8)
    return freeze(Item(key, name, xray, display=display, thumb=thumb, attribution=attribution))


def _decode(key: str, name: str, read, attribution: str = "") -> Item:
    """Decode through ``cxr_core.io.imaging`` once per file while it fits :func:`results_cache`'s byte budget.

    ``read`` gives the file's bytes (called only on a miss).
    """
    from cxr_core.io.imaging import load_xray

    def make() -> Item:
        data = read()  # an unreadable file raises: nothing is kept, the next run tries again
        try:
            xray = load_xray(data, name)
        except CXRError as exc:
            return Item(key, name, error=str(exc), attribution=attribution)
        return _item(key, name, xray, attribution)

    try:
        return results_cache().get_or_make(("decoded", key), make)
    except _Unreadable as exc:
        return Item(key, name, error=str(exc), attribution=attribution)


class _Unreadable(CXRError):
    """A sample file that could not be read (not cached)."""


def upload_item(uploaded) -> Item:
    """An ``st.file_uploader`` file as a review item (errors kept as the item's message).

    Keyed by the file's name and a digest of its bytes (a few ms a rerun), so the same upload is decoded once,
    and only someone holding the same bytes could ever be served the cached film.
    """
    import hashlib

    data = uploaded.getvalue()
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    return _decode(f"upload:{digest}:{uploaded.name}", uploaded.name, lambda: data)


def sample_item(sample: dict) -> Item:
    path = get_settings().samples_dir / sample["file"]
    credit = "; ".join(str(sample[k]) for k in ("source", "license", "attribution") if sample.get(k))

    def read() -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise _Unreadable(f"cannot read sample {path}: {exc}") from exc

    return _decode(f"sample:{sample['file']}:{path.resolve()}", sample["file"], read, credit)


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


def _stored_item(url: str, image_sha: str) -> Item:
    from cxr_core import storage
    from cxr_core.io.imaging import XRay

    def make() -> Item:
        with reading(db_at(url)) as s:
            image = storage.get_image(s, image_sha)
            if image is None:  # raised, so not cached
                raise CXRError(f"image {image_sha[:12]}... is not in the annotation database")
            pixels, depth = storage.image_pixels(image), image.bit_depth
            name = image.original_name or f"image {image_sha[:12]}"
        xray = XRay(pixels, "png", depth, image_sha, name, {"height": pixels.shape[0], "width": pixels.shape[1]})
        return _item(f"db:{image_sha}", name, xray)

    return results_cache().get_or_make(("stored", url, image_sha), make)


def stored_item(image_sha: str) -> Item:
    """A stored image as a review item (for the canvas and for revealing the model), loaded once per server.

    Images are keyed by pixel hash and never change, so one copy serves every browser session (kept while it
    fits :func:`results_cache`'s byte budget).
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
    Its arrays are read-only: one cached analysis serves every browser session.
    """

    prediction: object | None  # cxr_core.models.predict.Prediction
    cam: object | None
    cam_error: str = ""
    film: object | None = None  # cxr_core.analysis.FilmAnalysis
    engine: str = ""  # which engine and precision made the scores, e.g. "OpenVINO, float32" (engine_label)

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


def _analyse(weights_dir: str, name: str, sha256: str, image_sha: str, method: str | None, target: str | None,
             display_shape: tuple[int, int], allow_ood: bool, xray) -> Analysis:
    from cxr_core.analysis import analyse as analyse_film
    from cxr_core.explain.binarize import normalize, upsample

    engine, reason = cam_engine(weights_dir, name, sha256) if method is not None else (None, "")
    loaded = _loaded_model(weights_dir, name, sha256)
    decided = _Decided(screen_cached(weights_dir, name, sha256, image_sha, xray))
    result = analyse_film(loaded, xray, method=method if engine else None, target=target, allow_ood=allow_ood,
                          screener=decided, engine=engine)
    film = replace(result, cam=None)
    label = engine_label(result.cam, loaded)
    if not result.analysed or result.cam is None:
        return freeze(Analysis(result.prediction, None, reason, film, label))
    cam = result.cam
    heatmap = np.zeros(display_shape, np.float32) if cam.all_zero else normalize(upsample(cam.grid, display_shape))
    return freeze(Analysis(result.prediction, replace(cam, heatmap=heatmap), "", film, label))


def engine_label(cam, loaded) -> str:
    """Which engine and precision made the scores: the CAM result's engine (``"OpenVINO, float32"``), or, for
    scores without a heatmap (read by the Keras model itself), TensorFlow in the model's compute precision."""
    info = getattr(cam, "engine", None)
    if info is not None:
        return info.label
    policy = getattr(getattr(loaded, "model", None), "dtype_policy", None)
    return f"TensorFlow, {getattr(policy, 'compute_dtype', None) or 'float32'}"


def analyse(entry: ModelEntry, item: Item, method: str | None, target: str | None, *,
            allow_ood: bool = False) -> Analysis:
    """:func:`cxr_core.analysis.analyse` of ``entry``'s model for ``item`` (screen, warn, predict, explain);
    cached by image, model, method, target and override in :func:`results_cache`. ``method`` None: scores only."""
    weights = weights_key()
    key = ("analysis", weights, entry.name, entry.card.sha256, item.xray.sha256, method, target,
           tuple(item.display.shape), allow_ood)
    cache = results_cache()

    def make() -> Analysis:
        return _analyse(weights, entry.name, entry.card.sha256, item.xray.sha256, method, target,
                        tuple(item.display.shape), allow_ood, item.xray)

    if key in cache:
        return cache.get_or_make(key, make)
    with st.spinner("Running the model..."):
        return cache.get_or_make(key, make)


def screen_cached(weights_dir: str, name: str, sha256: str, image_sha: str, _xray):
    """The ``OODDecision`` of one model's screener for one X-ray, cached by model and image SHA-256."""
    from cxr_core.safety.screening import screener

    def make():
        return screener(_loaded_model(weights_dir, name, sha256), weights_dir).screen([_xray])[0]

    return results_cache().get_or_make(("screen", weights_dir, name, sha256, image_sha), make)


def screen_item(entry: ModelEntry, item: Item):
    """:func:`cxr_core.safety.screening.screen` of ``entry``'s model for ``item`` (an ``OODDecision``); cached."""
    return screen_cached(weights_key(), entry.name, entry.card.sha256, item.xray.sha256, item.xray)


def picture(key: tuple, make) -> bytes:
    """Encoded picture bytes (``make()``: JPEG or PNG) cached under ``("picture", *key)`` in :func:`results_cache`,
    so a rerun (a click elsewhere on the page) does not blend and encode the same overlay again."""
    return results_cache().get_or_make(("picture", *key), make)


def refusal_text(refused) -> str:
    """The page's refusal: the CLI's sentence, then each reason as a bullet with its measured figures.

    ``refused``: a :class:`cxr_core.analysis.FilmAnalysis` (or :class:`~ui.common.Analysis`), or a bare
    screening decision (the sessions page's intake).
    """
    from cxr_core.safety.screening import REFUSAL, refusal_lines

    decision = getattr(getattr(refused, "film", None) or refused, "screening", refused)
    return f"**{REFUSAL[0].upper() + REFUSAL[1:]}.** Model scores and heatmaps are not shown.\n\n" + "\n".join(
        f"- {r}" + (f" *({d})*" if d else "") for r, d in refusal_lines(decision))
