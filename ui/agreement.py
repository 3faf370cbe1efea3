"""The agreement page's state: its session keys and cached readings, heatmaps and scores of a reading session.

Readings, heatmaps and threshold-free metrics are cached per session + model + method (and the
session's fingerprint, which changes with every new reading or stored result), so moving the
threshold or rule recomputes only the mask metrics (score_batch). Images still pending in the
current reader's blind readings never enter these caches: :func:`agreement_view` asks blinding first.
The metrics, reports and exports themselves are in :mod:`cxr_core.agreement`. Session-state keys
start with ``agreement_``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from cxr_core.config import get_settings
from cxr_core.errors import CXRError
from ui import common

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

THRESHOLD_KINDS = {"otsu": "Otsu (CheXlocalize default)", "fixed": "Fixed threshold", "top": "Top k% of pixels"}
RULE_LABELS = {"true_positive_only": "True positives only (CheXlocalize)", "full": "Full (one-sided empty counts 0)"}
METRIC_LABELS = {"iou": "IoU", "dice": "Dice", "hit": "Hit (pointing game)", "mass": "Relevance mass",
                 "rank": "Relevance rank", "auc": "Pixel AUC"}
AGREEMENT_OVERRIDE = "agreement_allow_ood"  # expert override: score films a model refuses (logged)
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

    with common.reading() as s:
        return [(x.name, bool(x.blind)) for x in storage.list_sessions(s)]


def agreement_view(session_name: str) -> AgreementView:
    """The blind check for a whole session: the list form of :func:`ui.common.model_output_allowed`.

    Same reader (:func:`ui.common.current_reader_name`), same rule (:func:`cxr_core.safety.blinding.hidden_images`;
    with nobody chosen, images pending for anyone are hidden). Raises ``CXRError`` when the
    database cannot be asked, so the page shows nothing rather than everything (fails closed).
    """
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from cxr_core import storage
    from cxr_core.agreement import session_scores

    name = common.current_reader_name()
    try:
        with common.reading() as s:
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

    with common.reading(common.db_at(url)) as s:
        return session_scores.read_session(s, session_name, hidden=hidden)


def agreement_data(session_name: str, view: AgreementView):
    """The session's visible readings with their masks (:class:`cxr_core.agreement.session_scores.SessionData`)."""
    return _agreement_data(get_settings().database_url, session_name, view.fingerprint, view.hidden)


def agreement_models() -> dict[str, object]:
    """Ready registry models as :class:`cxr_core.agreement.session_scores.ModelRef`, by name."""
    from cxr_core.agreement.session_scores import ModelRef

    return {e.name: ModelRef.from_card(e.card) for e in common.ready_models(common.registry())}


@st.cache_data(max_entries=16, show_spinner="Checking that the session's films look like chest X-rays...")
def _agreement_refused(url: str, weights_dir: str, session_name: str, fingerprint: str, hidden: tuple[str, ...],
                       model) -> tuple[dict, ...]:
    from cxr_core.agreement.session_report import refusals
    from cxr_core.analysis import screen_films

    data = _agreement_data(url, session_name, fingerprint, hidden)
    loaded = common.loaded_by_name(model.name, model.checksum)

    def pixels(sha: str) -> np.ndarray:
        from cxr_core import storage

        with common.reading(common.db_at(url)) as s:
            return storage.load_pixels(s, sha)

    return tuple(refusals(data, {model.name: lambda xrays: screen_films(loaded, xrays)}, pixels))


def agreement_refused(session_name: str, view: AgreementView, model) -> tuple[dict, ...]:
    """The session's films ``model`` refuses as not a frontal chest X-ray, with reasons and figures
    (:func:`cxr_core.agreement.session_report.refusals` through the one analysis path); empty under the
    expert override (:data:`AGREEMENT_OVERRIDE`). Cached per session fingerprint and model."""
    if st.session_state.get(AGREEMENT_OVERRIDE):
        return ()
    return _agreement_refused(get_settings().database_url, common.weights_key(), session_name, view.fingerprint,
                              view.hidden, model)


def _skip(refused) -> frozenset[str]:
    return frozenset(r["sha256"] for r in refused)


def agreement_missing(data, model, method: str, refused=()) -> int:
    """How many heatmaps (``method`` and the random baseline) the readings still lack for ``model``
    (films it refuses need none)."""
    from cxr_core.agreement import session_scores

    with common.reading() as s:
        return len(session_scores.missing_jobs(s, data, model, (method, session_scores.BASELINE), skip=_skip(refused)))


def agreement_compute(data, model, method: str, progress=None, refused=()) -> int:
    """Compute and store the missing heatmaps with the cached CAM engine (never for a refused film)."""
    from cxr_core.agreement import session_scores

    def engine():
        found, reason = common.cam_engine(common.weights_key(), model.name, model.checksum)
        if found is None:
            raise CXRError(reason)
        return found

    return session_scores.compute_missing(common.db(), data, model, engine, method, progress=progress,
                                          skip=_skip(refused))


@st.cache_data(max_entries=16, show_spinner="Loading heatmaps...")
def _agreement_pairs(url: str, session_name: str, fingerprint: str, hidden: tuple[str, ...], model, method: str,
                     skip: frozenset[str] = frozenset()):
    from cxr_core.agreement import session_scores

    data = _agreement_data(url, session_name, fingerprint, hidden)
    with common.reading(common.db_at(url)) as s:
        pairs = session_scores.load_pairs(s, data, model, method, skip=skip)
    return pairs, session_scores.threshold_free(pairs)


def agreement_pairs(session_name: str, view: AgreementView, model, method: str, refused=()):
    """``(PairSet, threshold-free metrics)`` of one model × method, cached per session + model + method;
    readings of films the model refused are not paired."""
    return _agreement_pairs(get_settings().database_url, session_name, view.fingerprint, view.hidden, model, method,
                            _skip(refused))


def threshold_spec(kind: str, fixed: float, top: float) -> str:
    """The :class:`cxr_core.explain.binarize.Threshold` text for the page's threshold controls."""
    if kind == "fixed":
        return f"{fixed:g}"
    if kind == "top":
        return f"top{top:g}%"
    return "otsu"


def agreement_scores(session_name: str, view: AgreementView, models, method: str, threshold: str, rule: str,
                     refused: dict | None = None):
    """Scores of each model's ``method`` and random-baseline heatmaps, and the PairSets they came from;
    ``refused`` (model name -> :func:`agreement_refused`) leaves each model's refused films out."""
    from cxr_core.agreement import session_scores

    pairsets, scores = [], []
    for model in models:
        for m in (method, session_scores.BASELINE):
            pairs, free = agreement_pairs(session_name, view, model, m, (refused or {}).get(model.name, ()))
            pairsets.append(pairs)
            scores.extend(session_scores.score_pairs(pairs, threshold, rule, free=free))
    return pairsets, scores


@st.cache_data(max_entries=256, show_spinner=False)
def _gallery_picture(url: str, image_sha: str, reader: str, model: str, method: str, threshold: str,
                     fingerprint: str, _score, _heatmap, _mask) -> np.ndarray:
    from cxr_core.agreement.reports import make_case, render_case
    from cxr_core.explain.overlay import fit_within

    case = make_case(_score, common.stored_item(image_sha).xray.pixels, _mask, _heatmap)
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
    return common.stored_item(image_sha).xray.pixels


def agreement_filter_key(kind: str, session_name: str, options) -> str:
    """Key of a class or reader filter: one per session and set of options, so new options start all selected."""
    return f"{kind}::{session_name}::{'|'.join(options)}"


def agreement_times(data) -> list[dict]:
    """Time per case of the session (median, IQR per reader and for all readers) as plain rows."""
    from cxr_core.agreement.session_report import time_rows

    return time_rows(data)


def agreement_export(fmt: str, data, pairsets, scores, rule: str, refused=()) -> str:
    """The page's download in ``fmt`` (csv, json, html, coco) of exactly the scores it shows, with the films
    the models refused listed as the ``report`` command lists them (``refused``: rows of :func:`agreement_refused`)."""
    from dataclasses import replace

    from cxr_core.agreement import reports
    from cxr_core.agreement.session_report import build_report, to_coco

    if fmt == "coco":
        return to_coco(data, pairsets, scores)
    report = build_report(data, pairsets, scores, pixels=None if fmt == "csv" else agreement_pixels, rule=rule)
    report = replace(report, refused=tuple(refused))
    if fmt == "csv":
        return reports.to_csv(report.scores, report.excluded, report.refused)
    return reports.to_json(report) if fmt == "json" else reports.to_html(report)
