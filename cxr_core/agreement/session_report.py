"""A reading session's agreement report: :mod:`cxr_core.agreement.session_scores` records in, a ``reports.Report`` out.

:func:`session_report` is the whole flow the ``report`` command runs: hide what the reader must
not see, read the session, compute missing heatmaps (the CAM method and the random baseline),
score, and build the report with aggregates, reader-versus-reader IoU, diagnosis kappa, a gallery
of the worst and best cases and provenance (models, checksums, images, readings) in ``meta``.
The agreement page builds its exports with :func:`build_report` and :func:`coco_annotations`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from sqlalchemy.orm import sessionmaker

from cxr_core import agreement, storage

from cxr_core.agreement import reports
from cxr_core.agreement.session_scores import (
    BASELINE,
    CONSENSUS_READERS,
    EXCLUDED,
    ModelRef,
    PairSet,
    Reading,
    SessionData,
    SessionScoresError,
    check_options,
    compute_missing,
    diagnosis,
    excluded_note,
    hidden_for,
    load_pairs,
    read_session,
    reader_pairs,
    score_pairs,
)


def gallery_cases(pairsets: Sequence[PairSet], scores: Sequence[agreement.ImageScore],
                  pixels: Callable[[str], np.ndarray], k: int = 3) -> list[reports.GalleryCase]:
    """The ``k`` worst and best IoU of the real CAM methods (random baseline left out), as gallery cases."""
    where = {(p.model.name, p.method, key.image_id, key.reader): (p, i)
             for p in pairsets for i, key in enumerate(p.keys)}
    worst, best = reports.pick_cases([s for s in scores if s.method != BASELINE], k)
    cases = []
    for kind, chosen in (("worst", worst), ("best", best)):
        for score in chosen:
            p, i = where[(score.model, score.method, score.image_id, score.reader)]
            heatmap, mask = p.pair(i)
            cases.append(reports.make_case(score, pixels(p.keys[i].image_sha), mask, heatmap, kind))
    return cases


#: COCO categories of the masks that are not a drawn finding.
CONSENSUS_CATEGORY = "consensus (any finding)"
HEATMAP_CATEGORY = "model heatmap (binarised)"
#: Fabric shapes with straight edges: exported as COCO polygons; the rest (freehand, circles) as RLE.
POLYGON_KINDS = ("polygon", "polyline", "triangle", "rect", "labeledrect")


def region_outline(obj: Mapping, kind: str, shape: tuple[int, int], fit: Mapping | None) -> list[float]:
    """A straight-edged region's outline as COCO ``[x1, y1, x2, y2, ...]`` in image pixels (edges at integers).

    The vertices :func:`cxr_core.annotation.masks.region_masks` fills
    (:func:`~cxr_core.annotation.masks.straight_outline`); image (row, col) is COCO (y, x).
    """
    from cxr_core.annotation.masks import straight_outline

    return [float(v) for v in straight_outline(obj, kind, shape, fit)[:, ::-1].ravel()]


def reading_regions(reading: Reading) -> list[tuple[str, np.ndarray, list[float] | None, int, str]]:
    """``(finding, mask, polygon or None, canvas index, shape kind)`` of each region the reader drew."""
    from cxr_core.annotation.masks import canvas_objects, region_masks

    objects = canvas_objects(reading.canvas)
    stored = {r["index"]: r["label"] for r in reading.regions}
    regions = region_masks(objects, image_shape=reading.mask.shape, background_fit=reading.background_fit,
                           labels=[stored.get(i) for i in range(len(objects))])
    return [(r.label or "unlabelled", r.mask,
             region_outline(objects[r.index], r.kind, reading.mask.shape, reading.background_fit)
             if r.kind in POLYGON_KINDS else None, r.index, r.kind) for r in regions]


def coco_categories(annotations: Sequence[reports.CocoAnnotation]) -> list[str]:
    """The finding names used (in :data:`cxr_core.annotation.FINDINGS` order, others after), then consensus, heatmap."""
    from cxr_core.annotation import FINDINGS

    used = {a.category for a in annotations}
    extra = (CONSENSUS_CATEGORY, HEATMAP_CATEGORY)
    return ([f for f in FINDINGS if f in used] + sorted(used - set(FINDINGS) - set(extra))
            + [c for c in extra if c in used])


def coco_images(data: SessionData, image_ids: set[str] | None = None) -> list[reports.CocoImage]:
    """Every (or each chosen, and each excluded) image with each reading's diagnosis, confidence and exclusion."""
    out = []
    excluded = {e.image_sha for e in data.excluded}
    for sha, info in data.images.items():
        if image_ids is not None and info["image_id"] not in image_ids and sha not in excluded:
            continue
        readings = [{"reader": r.reader, "diagnosis": r.diagnosis, "confidence": r.confidence, "exclusion": None,
                     "annotation_id": r.annotation_id, "version": r.version, "consensus": r.consensus}
                    for r in data.readings if r.image_sha == sha]
        readings += [{"reader": e.reader, "diagnosis": EXCLUDED, "confidence": None, "exclusion": e.reason,
                      "annotation_id": e.annotation_id, "version": e.version, "consensus": False}
                     for e in data.excluded if e.image_sha == sha]
        if readings:
            out.append(reports.CocoImage(info["image_id"], info["image_id"], info["height"], info["width"],
                                         {"sha256": sha, "reference_label": info.get("reference_label"),
                                          "readings": readings}))
    return out


def coco_annotations(data: SessionData, pairsets: Sequence[PairSet] = (),
                     scores: Sequence[agreement.ImageScore] = ()) -> list[reports.CocoAnnotation]:
    """One annotation per drawn region (category: its finding), then each consensus mask, then each scored CAM
    heatmap's binarised mask (random baseline left out).

    With ``scores``, only the readings they score are exported; without, every visible reading.
    """
    from cxr_core.explain.binarize import Threshold, binarize, upsample

    scored = {(s.image_id, s.reader) for s in scores}
    out = []
    for r in data.readings:
        if scores and (r.image_id, r.reader) not in scored:
            continue
        reading = {"sha256": r.image_sha, "diagnosis": r.diagnosis, "confidence": r.confidence,
                   "annotation_id": r.annotation_id, "version": r.version}
        if r.consensus:
            out.append(reports.CocoAnnotation(r.image_id, r.image_id, CONSENSUS_CATEGORY, r.mask, reader=r.reader,
                                              source="consensus", attributes=reading))
            continue
        for finding, mask, polygon, index, kind in reading_regions(r):
            out.append(reports.CocoAnnotation(
                r.image_id, r.image_id, finding, mask, reader=r.reader, source="expert", polygon=polygon,
                attributes={**reading, "finding": finding, "region_index": index, "region_type": kind}))
    by_key = {(s.model, s.method, s.image_id, s.reader): s for s in scores}
    for p in (p for p in pairsets if p.method != BASELINE):
        for i, key in enumerate(p.keys):
            score = by_key.get((p.model.name, p.method, key.image_id, key.reader))
            if score is None:
                continue
            heatmap, mask = p.pair(i)
            spec = Threshold.parse(score.threshold)
            predicted = binarize(upsample(heatmap, mask.shape), method=spec.method, value=spec.value)
            out.append(reports.CocoAnnotation(
                key.image_id, key.image_id, HEATMAP_CATEGORY, predicted, reader=key.reader, source="model",
                attributes={"sha256": key.image_sha, "model": p.model.name, "model_sha256": p.model.checksum,
                            "method": p.method, "expert_class": key.target, "explains": key.explained,
                            "threshold": score.threshold, "iou": score.iou}))
    return out


def to_coco(data: SessionData, pairsets: Sequence[PairSet] = (), scores: Sequence[agreement.ImageScore] = ()
            ) -> str:
    """The session's COCO JSON (:func:`coco_annotations`, :func:`coco_images`); researchers reopen it in CVAT,
    Label Studio or pycocotools."""
    annotations = coco_annotations(data, pairsets, scores)
    shown = {s.image_id for s in scores} if scores else None
    return reports.to_coco(annotations, categories=coco_categories(annotations), images=coco_images(data, shown),
                           description=f"CXR Review session {data.name}: drawn regions, consensus and heatmap masks")


def build_report(data: SessionData, pairsets: Sequence[PairSet], scores: Sequence[agreement.ImageScore], *,
                 pixels: Callable[[str], np.ndarray] | None = None, gallery: int = 3, rule: str = "true_positive_only",
                 cam_target: str = "expert", title: str | None = None, extra: Mapping | None = None
                 ) -> reports.Report:
    """A :class:`~cxr_core.agreement.reports.Report` of ``scores`` with provenance (models, images, readings) in ``meta``.

    ``pixels(sha)`` gives an image's stored pixels for the gallery (none without it). Diagnosis
    agreement is that of the first model; every model's is in ``meta["diagnosis_by_model"]``.
    """
    shown = {(s.model, s.method, s.image_id, s.reader) for s in scores}
    kept = lambda p: (lambda k: (p.model.name, p.method, k.image_id, k.reader) in shown)  # noqa: E731
    by_model = {}
    for p in pairsets:
        if p.method != BASELINE and p.model.name not in by_model:
            by_model[p.model.name] = diagnosis(p, kept(p))
    cases = gallery_cases(pairsets, scores, pixels, gallery) if pixels is not None and gallery > 0 else []
    image_ids, readers = {s.image_id for s in scores}, {s.reader for s in scores}
    excluded = [{"image_id": e.image_id, "reader": e.reader, "reason": e.reason, "annotation_id": e.annotation_id,
                 "version": e.version} for e in data.excluded]
    meta = {
        "session": data.name, "blind": data.blind, "heatmap_target": cam_target,
        "baseline": "random CAM (uniform(-1, 1) channel weights seeded by the image hash), scored the same way",
        "models": [{"name": p.model.name, "sha256": p.model.checksum, "classes": list(p.model.classes),
                    "method": p.method, "readings_without_result": p.missing} for p in pairsets],
        "readers": sorted(readers - set(CONSENSUS_READERS)),
        "consensus_readers": [c for c in CONSENSUS_READERS if c in readers],
        "consensus": "on films two or more readers read: pixels marked by more than half of them (majority; a tie "
                     "is left out) and STAPLE's truth probability >= 0.5 (Warfield et al. 2004); diagnosis: the "
                     "majority's, uncertain on a tie; not in reader-versus-reader agreement or diagnosis kappa",
        "images": [dict(info) for info in data.images.values() if info["image_id"] in image_ids],
        "readings": [{"image_id": r.image_id, "reader": r.reader, "diagnosis": r.diagnosis,
                      "annotation_id": r.annotation_id, "version": r.version, "consensus": r.consensus,
                      "confidence": r.confidence} for r in data.readings
                     if r.image_id in image_ids and r.reader in readers],
        "hidden_images": len(data.hidden), "unread_images": len(data.unread),
        "excluded_readings": len(excluded), "excluded_note": excluded_note(data.excluded),
        "reading_times": "server-recorded time from a film first being shown to its submission, every version "
                         "(revisions and exclusions included); median and interquartile range (numpy percentiles)",
        "diagnosis_model": next(iter(by_model), None),
        "diagnosis_by_model": {m: d.to_dict() if d else None for m, d in by_model.items()},
        **dict(extra or {}),
    }
    return reports.Report(
        title=title or f"Heatmap-versus-expert agreement: session {data.name}", scores=list(scores),
        groups=agreement.aggregate(scores), reader_pairs=[p for p in reader_pairs(data, readers, rule=rule)
                                                          if p.image_id in image_ids],
        diagnosis=next(iter(by_model.values()), None), gallery=cases, meta=meta, excluded=tuple(excluded),
        times=tuple(time_rows(data)))


def time_rows(data: SessionData) -> list[dict]:
    """Time per case of the session as plain rows (reader ``None``: all readers), for reports."""
    return [{"session": t.session, "reader": t.reader, "n": t.n, "untimed": t.untimed, "median_s": t.median_s,
             "q1_s": t.q1_s, "q3_s": t.q3_s, "iqr_s": t.iqr_s} for t in data.times]


def session_report(factory: sessionmaker, name: str, models: Sequence[tuple[ModelRef, Callable[[], object]]], *,
                   method: str = "gradcam", threshold: str = "otsu", rule: str = "true_positive_only",
                   cam_target: str = "expert", reader: str | None = None, compute: bool = True, gallery: int = 3,
                   with_consensus: bool = True,
                   progress: Callable[[str, int, int], None] | None = None,
                   screens: Mapping[str, Callable[[Sequence], Sequence]] | None = None) -> "SessionReport":
    """The whole flow for one session: hide, read, screen, compute what is missing, score ``method`` and the baseline.

    ``models`` pairs each :class:`ModelRef` with a zero-argument engine loader (see
    :func:`compute_missing`). Blinding as :func:`hidden_for` ``(reader)``. ``screens`` maps a model
    name to the first steps of its analysis path, ``lambda xrays: cxr_core.analysis.screen_films(loaded, xrays)``
    (see :func:`refusals`): a refused image gets no heatmap, is in none of that model's scores and is listed in
    ``report.refused`` with the same reasons and figures as every other page and command gives.
    ``with_consensus``: score the consensus pseudo-readers too (see :mod:`cxr_core.agreement.session_scores`).
    """
    from cxr_core.explain.binarize import Threshold

    spec = str(Threshold.parse(threshold))
    if rule not in agreement.RULES:
        raise SessionScoresError(f"empty-mask rule {rule!r} unknown; accepted: {', '.join(agreement.RULES)}")
    check_options([method], cam_target)
    if method == BASELINE:
        raise SessionScoresError(f"method {method!r} is the baseline, scored beside every model; choose a CAM method")
    with factory.begin() as s:
        data = read_session(s, name, hidden=hidden_for(s, reader), with_consensus=with_consensus)
    if not data.readings:
        raise SessionScoresError(f"session {name!r} has no submitted reading visible to "
                                 f"{reader or 'an unnamed user'} ({len(data.hidden)} image(s) still read blind, "
                                 f"{len(data.excluded)} reading(s) excluded by readers)")
    def pixels(sha: str) -> np.ndarray:
        with factory.begin() as s:
            return storage.load_pixels(s, sha)

    refused = refusals(data, screens or {}, pixels)
    skipped = {m: {r["sha256"] for r in refused if r["model"] == m} for m in (screens or {})}
    pairsets, scores = [], []
    for model, get_engine in models:
        skip = skipped.get(model.name, set())
        if compute:
            report_progress = None if progress is None else (lambda d, t, m=model.name: progress(m, d, t))
            compute_missing(factory, data, model, get_engine, method, cam_target=cam_target, progress=report_progress,
                            skip=skip)
        with factory.begin() as s:
            pairs = [load_pairs(s, data, model, m, cam_target=cam_target, skip=skip) for m in (method, BASELINE)]
        for p in pairs:
            pairsets.append(p)
            scores.extend(score_pairs(p, spec, rule))
    report = build_report(data, pairsets, scores, pixels=pixels, gallery=gallery, rule=rule, cam_target=cam_target)
    return SessionReport(replace(report, refused=tuple(refused)), data, tuple(pairsets))


def refusals(data: SessionData, screens: Mapping[str, Callable[[Sequence], Sequence]],
             pixels: Callable[[str], np.ndarray], *, batch: int = 16) -> list[dict]:
    """``{"image_id", "sha256", "model", "reasons", "details", "checks"}`` for every read image a model refuses.

    ``screens[model](xrays)`` returns one :class:`cxr_core.analysis.FilmAnalysis` per X-ray (normally
    :func:`cxr_core.analysis.screen_films`); the stored pixels are decoded once and screened by every model.
    """
    from cxr_core.io.imaging import XRay

    images = {r.image_sha: r.image_id for r in data.readings}
    if not screens or not images:
        return []
    out = []
    shas = list(images)
    for start in range(0, len(shas), batch):  # a batch of films in memory at a time
        xrays = [XRay(pixels(sha), "png", 16, sha, images[sha], {}) for sha in shas[start:start + batch]]
        for model, screen in screens.items():
            out += [{"image_id": x.name, "sha256": x.sha256, **a.refusal_row(), "model": model}
                    for x, a in zip(xrays, screen(xrays)) if a.refused]
    return out


@dataclass(frozen=True)
class SessionReport:
    """:func:`session_report`'s answer: the report and what it was made from (for COCO and checks)."""

    report: reports.Report
    data: SessionData
    pairsets: tuple[PairSet, ...]

    def coco(self) -> str:
        """COCO JSON of the drawn regions, consensus masks and each scored heatmap's binarised mask."""
        return to_coco(self.data, self.pairsets, self.report.scores)


__all__ = ["CONSENSUS_CATEGORY", "HEATMAP_CATEGORY", "POLYGON_KINDS", "SessionReport", "build_report",
           "coco_annotations", "coco_categories", "coco_images", "gallery_cases", "reading_regions", "refusals",
           "region_outline", "session_report", "time_rows", "to_coco"]
