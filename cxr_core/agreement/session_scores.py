"""A reading session's heatmap-versus-expert agreement: stored readings and model results in, a Report out.

The glue between :mod:`cxr_core.storage` and :mod:`cxr_core.agreement` / :mod:`cxr_core.agreement.reports`:

1. :func:`read_session` takes the latest submitted reading of every (reader, image) of a session,
   with its rasterised mask, leaving out images the caller must keep hidden (blind readings
   still pending: :func:`cxr_core.safety.blinding.hidden_images`).
2. :func:`compute_missing` runs the models on readings that have no stored result yet (the chosen
   CAM method and always the ``"random"`` baseline) and stores them with
   :func:`~cxr_core.storage.save_model_result`. It frames its own short transactions, one read and
   one write per batch, because a CAM pass takes far longer than SQLite's write lock should be held.
3. :func:`load_pairs` pairs each reading with one model's stored heatmap: a :class:`PairSet` per
   model and method. Heatmaps are stored at the CAM layer's resolution (the map ``agree`` gets);
   scoring upsamples them to the X-ray's size, as CheXlocalize does.
4. :func:`score_pairs` scores a PairSet at a threshold and empty-mask rule (threshold-free metrics
   can be passed in precomputed, so a new threshold costs only the mask metrics).
   :mod:`cxr_core.agreement.session_report` turns the scores into a report (aggregates, reader-versus-reader
   IoU, diagnosis kappa, gallery, provenance).

Consensus: on every film two or more readers read (excluded readings left out), :func:`read_session`
adds the readings of two pseudo-readers, :data:`CONSENSUS_MAJORITY` (pixels marked by strictly more
than half the readers) and :data:`CONSENSUS_STAPLE` (STAPLE's probability >= 0.5; see
:mod:`cxr_core.annotation.consensus`), so heatmaps are scored against consensus as CheXlocalize does. Their
diagnosis is the readers' majority diagnosis (uncertain on a tie). They flow through pairing,
scoring and reports like any reader (``Reading.consensus`` / ``PairKey.consensus`` mark them), but
reader-versus-reader agreement never compares a reader with a consensus, and :func:`diagnosis`
(kappa) leaves them out: their diagnoses are the readers' own, counted again.

Excluded readings (a reader answered "not a chest film" / "not readable" instead of a diagnosis)
are in no number: :func:`read_session` lists them in ``SessionData.excluded`` and
:func:`excluded_note` says how many, for pages and reports.

Time per case: ``SessionData.times`` holds the median and interquartile range of reading time per
reader and for the session (:mod:`cxr_core.annotation.reading_times`), for pages and reports.

Which class a heatmap explains: with ``cam_target="expert"`` (default) the class the expert gave,
as CheXlocalize explains each pathology against its own segmentation; when the model has no such
class (or the expert was uncertain) the model's top class. ``"predicted"``: always the top class.
``ImageScore.target`` is always the expert's class, so Normal readings are reported apart.

About 470 lines by choice: loading a session's pairs, scoring them and the per-reader tables share the
pair records and the blinding rule; split, each part would re-check what the other already checked.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cxr_core import agreement, storage

from cxr_core.annotation import consensus
from cxr_core.errors import CXRError
from cxr_core.annotation.reading_times import reading_times, summarise_times

BASELINE = "random"
CAM_TARGETS = ("expert", "predicted")
#: Pseudo-readers added on every film two or more readers read (see module docstring).
CONSENSUS_MAJORITY, CONSENSUS_STAPLE = consensus.MAJORITY_READER, consensus.STAPLE_READER
CONSENSUS_READERS = consensus.READERS
#: The diagnosis a reader stores when they exclude the film (storage.EXCLUDED once that lands everywhere).
EXCLUDED = getattr(storage, "EXCLUDED", "excluded")


class SessionScoresError(CXRError):
    """A session, model or option that cannot be scored as asked."""


@dataclass(frozen=True)
class ModelRef:
    """A registered model as results are stored under it: name, file checksum and classes."""

    name: str
    checksum: str
    classes: tuple[str, ...]

    @classmethod
    def from_card(cls, card) -> "ModelRef":
        """From a :class:`~cxr_core.models.manifest.ModelCard` (``entry.card`` or ``loaded.card``)."""
        return cls(card.name, card.sha256, tuple(card.classes))

    def class_named(self, name: str) -> str | None:
        """The model's spelling of class ``name`` (case-insensitive), or None."""
        return next((c for c in self.classes if c.lower() == str(name).strip().lower()), None)


@dataclass(frozen=True)
class Reading:
    """The latest submitted version of one reader's reading of one image."""

    image_sha: str
    image_id: str  # the name reports show (file name, made unique within the session)
    reader: str
    diagnosis: str
    annotation_id: int | None  # None for a consensus
    version: int  # 0 for a consensus
    mask: np.ndarray  # (H, W) bool at the image's stored size
    consensus: bool = False  # a pseudo-reader's reading, made from the readers' readings of the film
    confidence: int | None = None
    regions: tuple = ()  # the stored regions: {"index", "type", "label", "area_px"} each
    canvas: Mapping | None = None  # the stored canvas JSON (per-region masks for COCO)
    background_fit: Mapping | None = None


@dataclass(frozen=True)
class Exclusion:
    """A reading in which the reader excluded the film instead of giving a diagnosis."""

    image_sha: str
    image_id: str
    reader: str
    reason: str
    annotation_id: int
    version: int


@dataclass(frozen=True)
class SessionData:
    """What a session holds for scoring, hidden images already left out."""

    name: str
    session_id: int
    blind: bool
    images: Mapping[str, dict]  # sha -> {image_id, sha256, height, width, reference_label}
    readings: tuple[Reading, ...]
    hidden: tuple[str, ...]  # session images left out (still pending in a blind reading)
    unread: tuple[str, ...]  # visible session images nobody has submitted yet
    excluded: tuple[Exclusion, ...] = ()  # latest readings that exclude the film: in no number
    #: Time per case (:func:`cxr_core.annotation.reading_times.summarise_times`) of every submitted version in the
    #: session, revisions and exclusions included: per reader, then all readers (``reader=None``).
    times: tuple = ()

    @property
    def readers(self) -> list[str]:
        """The real readers with a scored reading (consensus pseudo-readers not included)."""
        return sorted({r.reader for r in self.readings if not r.consensus})

    @property
    def consensus_readers(self) -> list[str]:
        """The consensus pseudo-readers present (on films two or more readers read)."""
        return [c for c in CONSENSUS_READERS if any(r.reader == c for r in self.readings)]


def excluded_note(excluded: Sequence[Exclusion]) -> str:
    """"N readings excluded by readers (count per reason): left out of every number", or that none was."""
    from dataclasses import asdict

    from cxr_core.agreement.reports import excluded_text

    return excluded_text([asdict(e) for e in excluded]) if excluded else "No reading was excluded by its reader."


def consensus_readings(readings: Sequence[Reading]) -> list[Reading]:
    """Majority and STAPLE readings of every film two or more of ``readings`` (real readers) read."""
    by_image: dict[str, list[Reading]] = {}
    for r in readings:
        if not r.consensus:
            by_image.setdefault(r.image_sha, []).append(r)
    out = []
    for rows in by_image.values():
        if len(rows) < 2:
            continue
        masks = np.stack([r.mask for r in rows])
        label = consensus.majority_label([r.diagnosis for r in rows], tie=storage.UNCERTAIN)
        for name, mask in ((CONSENSUS_MAJORITY, consensus.majority_vote(masks)),
                           (CONSENSUS_STAPLE, consensus.staple(masks).mask(0.5))):
            out.append(Reading(rows[0].image_sha, rows[0].image_id, name, label, None, 0, mask, consensus=True))
    return out


def _unique_ids(rows: Sequence[tuple[str, str | None]]) -> dict[str, str]:
    """sha -> image id: the original file name, with the hash's start added where names repeat."""
    names = {sha: (name or f"image-{sha[:12]}") for sha, name in rows}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {sha: name if counts[name] == 1 else f"{name}#{sha[:8]}" for sha, name in names.items()}


def read_session(s: Session, name: str, *, hidden: Collection[str] = (), with_consensus: bool = True) -> SessionData:
    """The session called ``name`` with every visible reading's mask and, where two or more readers read a
    film, the consensus pseudo-readers' (unless ``with_consensus=False``); see module docstring."""
    session = storage.get_session(s, name)
    if session is None:
        known = [x.name for x in storage.list_sessions(s)]
        raise SessionScoresError(
            f"no reading session named {name!r}; sessions: {', '.join(map(repr, known)) or 'none'}")
    rows = s.execute(
        select(storage.Image.sha256, storage.Image.original_name, storage.Image.height, storage.Image.width,
               storage.Image.reference_label)
        .join(storage.SessionImage, storage.SessionImage.image_sha == storage.Image.sha256)
        .where(storage.SessionImage.session_id == session.id).order_by(storage.SessionImage.position)
    ).all()
    ids = _unique_ids([(r.sha256, r.original_name) for r in rows])
    hidden_set = set(hidden)
    images = {r.sha256: {"image_id": ids[r.sha256], "sha256": r.sha256, "height": r.height, "width": r.width,
                         "reference_label": r.reference_label} for r in rows if r.sha256 not in hidden_set}
    names = {r.id: r.name for r in storage.session_readers(s, session.id)}
    order = {sha: i for i, sha in enumerate(images)}
    latest = [a for a in storage.latest_annotations(s, session_id=session.id) if a.image_sha in images]
    reader_of = lambda a: names.get(a.reader_id, f"reader {a.reader_id}")  # noqa: E731
    is_excluded = lambda a: getattr(a, "exclusion", None) is not None or a.diagnosis == EXCLUDED  # noqa: E731
    readings = [Reading(a.image_sha, ids[a.image_sha], reader_of(a), a.diagnosis, a.id, a.version,
                        storage.annotation_mask(a), confidence=a.confidence, regions=tuple(a.regions or ()),
                        canvas=a.canvas_json, background_fit=a.background_fit)
                for a in latest if not is_excluded(a)]
    if with_consensus:
        readings += consensus_readings(readings)
    excluded = sorted((Exclusion(a.image_sha, ids[a.image_sha], reader_of(a),
                                 getattr(a, "exclusion", None) or "reason not recorded", a.id, a.version)
                       for a in latest if is_excluded(a)), key=lambda e: (order[e.image_sha], e.reader))
    read = {a.image_sha for a in latest}
    times = tuple(summarise_times(reading_times(s, session_id=session.id)))
    return SessionData(session.name, session.id, bool(session.blind), images,
                       tuple(sorted(readings, key=lambda r: (order[r.image_sha], r.consensus,  # readers, then consensus
                                                             r.reader if not r.consensus else "",
                                                             CONSENSUS_READERS.index(r.reader) if r.consensus else 0))),
                       tuple(r.sha256 for r in rows if r.sha256 in hidden_set),
                       tuple(sha for sha in images if sha not in read), tuple(excluded), times)


def fingerprint(s: Session, session_id: int) -> str:
    """Changes whenever a reading is submitted or a model result stored for the session's images (cache key)."""
    n_ann, last_ann = s.execute(select(func.count(storage.Annotation.id), func.max(storage.Annotation.id))
                                .where(storage.Annotation.session_id == session_id)).one()
    n_res, last_res = s.execute(
        select(func.count(storage.ModelResult.id), func.max(storage.ModelResult.id))
        .join(storage.SessionImage, storage.SessionImage.image_sha == storage.ModelResult.image_sha)
        .where(storage.SessionImage.session_id == session_id)).one()
    return f"{n_ann}:{last_ann}:{n_res}:{last_res}"


def check_options(methods: Sequence[str], cam_target: str) -> None:
    from cxr_core.explain.cam import METHODS

    bad = [m for m in methods if m not in METHODS]
    if bad or cam_target not in CAM_TARGETS:
        raise SessionScoresError(f"method(s) {bad} / heatmap target {cam_target!r} unknown; accepted methods: "
                                 f"{', '.join(METHODS)}; targets: {', '.join(CAM_TARGETS)}")


def _wanted(model: ModelRef, reading: Reading, cam_target: str) -> str | None:
    """The class the heatmap should explain for this reading, or None for the model's top class."""
    return model.class_named(reading.diagnosis) if cam_target == "expert" else None


def _results(s: Session, model: ModelRef, shas: Collection[str]) -> dict[str, list]:
    """Stored results of this model file for these images, per image."""
    out: dict[str, list] = {}
    query = select(storage.ModelResult).where(
        storage.ModelResult.model_name == model.name, storage.ModelResult.model_checksum == model.checksum,
        storage.ModelResult.image_sha.in_(list(shas)))
    for r in s.scalars(query):
        out.setdefault(r.image_sha, []).append(r)
    return out


def _find(stored: list, model: ModelRef, method: str, wanted: str | None):
    """The stored result for ``method`` explaining ``wanted`` (None: the model's top class), or None."""
    if wanted is None:
        if not stored:
            return None
        probs = stored[0].probabilities
        wanted = max(model.classes, key=lambda c: probs.get(c, -1.0))  # top class; temperature keeps the order
    return next((r for r in stored if r.method == method and r.target == wanted), None)


def missing_jobs(s: Session, data: SessionData, model: ModelRef, methods: Sequence[str], *,
                 cam_target: str = "expert", skip: Collection[str] = ()) -> list[tuple[str, str, str | None]]:
    """``(image_sha, method, target or None)`` for each heatmap the readings need and the store lacks.

    ``skip``: images the model refused (:func:`cxr_core.analysis.screen_films`): no heatmap is made for them.
    """
    check_options(methods, cam_target)
    stored = _results(s, model, data.images)
    jobs = []
    for reading in data.readings:
        if reading.image_sha in skip:
            continue
        wanted = _wanted(model, reading, cam_target)
        for method in methods:
            if _find(stored.get(reading.image_sha, []), model, method, wanted) is None:
                jobs.append((reading.image_sha, method, wanted))
    return list(dict.fromkeys(jobs))


def compute_missing(factory: sessionmaker, data: SessionData, model: ModelRef, get_engine: Callable[[], object],
                    method: str = "gradcam", *, cam_target: str = "expert", batch_size: int = 8,
                    progress: Callable[[int, int], None] | None = None, skip: Collection[str] = ()) -> int:
    """Compute and store the heatmaps ``model`` lacks for the readings: ``method`` and the random baseline.

    ``get_engine()`` returns a :class:`~cxr_core.explain.cam.CamEngine` for ``model``; it is called only
    when something is missing. Heatmaps are stored as the CAM grid in float32. Returns how many
    results were stored. Transactions are framed here (see module doc). ``skip``: images the model
    refused as not a frontal chest X-ray (:func:`cxr_core.analysis.screen_films`), never computed.
    """
    from cxr_core.io.imaging import XRay

    with factory.begin() as s:
        jobs = missing_jobs(s, data, model, (method, BASELINE), cam_target=cam_target, skip=skip)
    if not jobs:
        return 0
    engine = get_engine()
    if tuple(engine.classes) != model.classes:
        raise SessionScoresError(f"the engine's classes {list(engine.classes)} are not model {model.name}'s "
                                 f"{list(model.classes)}")
    groups: dict[tuple[str, str | None], list[str]] = {}
    for sha, m, target in jobs:
        groups.setdefault((m, target), []).append(sha)
    done = 0
    for (m, target), shas in groups.items():
        for start in range(0, len(shas), batch_size):
            chunk = shas[start:start + batch_size]
            with factory.begin() as s:
                pixels = [storage.load_pixels(s, sha) for sha in chunk]
            xrays = [XRay(p, "png", 16, sha, data.images[sha]["image_id"], {}) for p, sha in zip(pixels, chunk)]
            results = engine.run(xrays, method=m, target=target, batch_size=batch_size)
            with factory.begin() as s:
                for sha, r in zip(chunk, results):
                    storage.save_model_result(
                        s, image_sha=sha, model_name=model.name, model_checksum=model.checksum, method=m,
                        target=r.target, heatmap=r.grid, heatmap_dtype=np.float32,
                        probabilities=dict(zip(r.prediction.classes, map(float, r.prediction.probabilities))))
            done += len(chunk)
            if progress is not None:
                progress(done, len(jobs))
    return done


@dataclass(frozen=True)
class PairKey:
    """One reading paired with one model's heatmap."""

    image_sha: str
    image_id: str
    reader: str
    target: str  # the expert's class
    explained: str  # the class the heatmap explains
    predicted: str  # the model's top class
    consensus: bool = False  # the reading is a consensus pseudo-reader's


@dataclass(frozen=True)
class PairSet:
    """A model × method's heatmaps against every visible reading, stacked by shape for scoring."""

    session: str
    model: ModelRef
    method: str
    keys: tuple[PairKey, ...]
    groups: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # (indices, heatmaps, masks) per shape
    missing: int  # readings with no stored result (not paired)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The (heatmap, expert mask) of pair ``i`` as stored."""
        for index, heatmaps, masks in self.groups:
            where = np.flatnonzero(index == i)
            if where.size:
                return heatmaps[where[0]], masks[where[0]]
        raise IndexError(i)


def load_pairs(s: Session, data: SessionData, model: ModelRef, method: str, *,
               cam_target: str = "expert", skip: Collection[str] = ()) -> PairSet:
    """Pair each visible reading with the stored ``method`` heatmap of ``model`` (see module docstring).

    ``skip``: images the model refused; their readings are not paired (nor counted as missing), even
    where a heatmap was stored before (an override, or a model file that screened differently).
    """
    check_options([method], cam_target)
    stored = _results(s, model, data.images)
    keys, maps, masks, missing = [], [], [], 0
    for reading in data.readings:
        if reading.image_sha in skip:
            continue
        found = _find(stored.get(reading.image_sha, []), model, method, _wanted(model, reading, cam_target))
        heatmap = None if found is None else storage.result_heatmap(found)
        if heatmap is None:
            missing += 1
            continue
        predicted = max(model.classes, key=lambda c: found.probabilities.get(c, -1.0))
        keys.append(PairKey(reading.image_sha, reading.image_id, reading.reader, reading.diagnosis, found.target,
                            predicted, reading.consensus))
        maps.append(heatmap)
        masks.append(reading.mask)
    shapes: dict[tuple, list[int]] = {}
    for i, (h, m) in enumerate(zip(maps, masks)):
        shapes.setdefault((h.shape, m.shape), []).append(i)
    groups = tuple((np.array(idx), np.stack([maps[i] for i in idx]), np.stack([masks[i] for i in idx]))
                   for idx in shapes.values())
    return PairSet(data.name, model, method, tuple(keys), groups, missing)


def threshold_free(pairs: PairSet) -> dict[str, np.ndarray]:
    """Hit, mass, rank and AUC of every pair (they do not depend on the threshold or rule: compute once)."""
    out = {k: np.full(len(pairs.keys), np.nan) for k in agreement.MAP_METRICS}
    for index, heatmaps, masks in pairs.groups:
        batch = agreement.score_batch(heatmaps, masks, "otsu")
        for k in agreement.MAP_METRICS:
            out[k][index] = batch[k]
    return out


def score_pairs(pairs: PairSet, threshold: str = "otsu", rule: str = "true_positive_only", *,
                free: Mapping[str, np.ndarray] | None = None) -> list[agreement.ImageScore]:
    """One :class:`~cxr_core.agreement.ImageScore` per pair, in ``pairs.keys`` order.

    ``free`` is :func:`threshold_free` of the same pairs; given, only the mask metrics are computed.
    Every number equals :func:`~cxr_core.agreement.score_image` on the pair's stored heatmap and mask.
    """
    from cxr_core.explain.binarize import Threshold

    spec = Threshold.parse(threshold)
    n = len(pairs.keys)
    values = {k: np.full(n, np.nan) for k in (*agreement.METRICS, "pred_fraction", "gt_fraction")}
    for index, heatmaps, masks in pairs.groups:
        batch = agreement.score_batch(heatmaps, masks, spec, rule, threshold_free=free is None)
        for k, v in batch.items():
            values[k][index] = v
    if free is not None:
        for k in agreement.MAP_METRICS:
            values[k] = np.asarray(free[k], float)
    return [agreement.ImageScore(image_id=key.image_id, model=pairs.model.name, method=pairs.method,
                                 target=key.target, reader=key.reader, session=pairs.session, threshold=str(spec),
                                 rule=rule, **{k: float(v[i]) for k, v in values.items()})
            for i, key in enumerate(pairs.keys)]


def diagnosis(pairs: PairSet, keep: Callable[[PairKey], bool] = lambda k: True, *, n_boot: int = 1000,
              seed: int = 0) -> agreement.DiagnosisAgreement | None:
    """Expert's class versus the model's top class over the readings (uncertain ones left out); None if none.

    Consensus pseudo-readers are left out: their diagnoses are the readers' own, counted again.
    """
    keys = [k for k in pairs.keys if keep(k) and not k.consensus and k.target != storage.UNCERTAIN]
    if not keys:
        return None
    labels = list(dict.fromkeys([*pairs.model.classes, *sorted({k.target for k in keys})]))
    return agreement.diagnosis_agreement([k.target for k in keys], [k.predicted for k in keys], labels=labels,
                                         n_boot=n_boot, seed=seed)


def reader_pairs(data: SessionData, readers: Collection[str] | None = None, *,
                 rule: str = "true_positive_only") -> list[agreement.ReaderPair]:
    """Reader-versus-reader IoU on every image two or more (of ``readers``) marked; consensus never compared."""
    masks: dict[str, dict[str, np.ndarray]] = {}
    for r in data.readings:
        if not r.consensus and (readers is None or r.reader in readers):
            masks.setdefault(r.image_id, {})[r.reader] = r.mask
    return agreement.reader_agreement(masks, rule=rule)


def hidden_for(s: Session, reader: str | None) -> set[str]:
    """Images whose model output ``reader`` (a name; None: nobody chosen, stricter) may not see yet."""
    from cxr_core.safety import blinding

    reader_id = None
    if reader is not None:
        found = storage.get_reader(s, reader)
        if found is None:
            raise SessionScoresError(f"no reader named {reader!r}; readers: "
                                     f"{', '.join(repr(r.name) for r in storage.list_readers(s)) or 'none'}")
        reader_id = found.id
    return blinding.hidden_images(s, reader_id)


__all__ = [
    "BASELINE", "CAM_TARGETS", "CONSENSUS_MAJORITY", "CONSENSUS_READERS", "CONSENSUS_STAPLE", "EXCLUDED", "Exclusion",
    "ModelRef", "PairKey", "PairSet", "Reading", "SessionData", "SessionScoresError", "check_options",
    "compute_missing", "consensus_readings", "diagnosis", "excluded_note", "fingerprint", "hidden_for", "load_pairs",
    "missing_jobs", "read_session", "reader_pairs", "score_pairs", "threshold_free",
]
