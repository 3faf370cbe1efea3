"""A reading session's agreement report: :mod:`cxr_core.session_scores` records in, a ``reports.Report`` out.

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

from cxr_core import agreement, reports, storage
from cxr_core.session_scores import (
    BASELINE,
    ModelRef,
    PairSet,
    SessionData,
    SessionScoresError,
    check_options,
    compute_missing,
    diagnosis,
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


def coco_annotations(data: SessionData, pairsets: Sequence[PairSet] = (),
                     scores: Sequence[agreement.ImageScore] = ()) -> list[reports.CocoAnnotation]:
    """Expert masks, then each scored CAM heatmap's binarised mask (source ``model``; random baseline left out).

    With ``scores``, only the readings they score are exported; without, every visible reading.
    """
    from cxr_core.binarize import Threshold, binarize, upsample

    scored = {(s.image_id, s.reader) for s in scores}
    out = [reports.CocoAnnotation(r.image_id, r.image_id, r.diagnosis, r.mask, reader=r.reader, source="expert",
                                  attributes={"sha256": r.image_sha, "annotation_id": r.annotation_id,
                                              "version": r.version})
           for r in data.readings if not scores or (r.image_id, r.reader) in scored]
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
                key.image_id, key.image_id, key.target, predicted, reader=key.reader, source="model",
                attributes={"sha256": key.image_sha, "model": p.model.name, "model_sha256": p.model.checksum,
                            "method": p.method, "explains": key.explained, "threshold": score.threshold,
                            "iou": score.iou}))
    return out


def build_report(data: SessionData, pairsets: Sequence[PairSet], scores: Sequence[agreement.ImageScore], *,
                 pixels: Callable[[str], np.ndarray] | None = None, gallery: int = 3, rule: str = "true_positive_only",
                 cam_target: str = "expert", title: str | None = None, extra: Mapping | None = None
                 ) -> reports.Report:
    """A :class:`~cxr_core.reports.Report` of ``scores`` with provenance (models, images, readings) in ``meta``.

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
    meta = {
        "session": data.name, "blind": data.blind, "heatmap_target": cam_target,
        "baseline": "random CAM (uniform(-1, 1) channel weights seeded by the image hash), scored the same way",
        "models": [{"name": p.model.name, "sha256": p.model.checksum, "classes": list(p.model.classes),
                    "method": p.method, "readings_without_result": p.missing} for p in pairsets],
        "readers": sorted(readers),
        "images": [dict(info) for info in data.images.values() if info["image_id"] in image_ids],
        "readings": [{"image_id": r.image_id, "reader": r.reader, "diagnosis": r.diagnosis,
                      "annotation_id": r.annotation_id, "version": r.version} for r in data.readings
                     if r.image_id in image_ids and r.reader in readers],
        "hidden_images": len(data.hidden), "unread_images": len(data.unread),
        "diagnosis_model": next(iter(by_model), None),
        "diagnosis_by_model": {m: d.to_dict() if d else None for m, d in by_model.items()},
        **dict(extra or {}),
    }
    return reports.Report(
        title=title or f"Heatmap-versus-expert agreement: session {data.name}", scores=list(scores),
        groups=agreement.aggregate(scores), reader_pairs=[p for p in reader_pairs(data, readers, rule=rule)
                                                          if p.image_id in image_ids],
        diagnosis=next(iter(by_model.values()), None), gallery=cases, meta=meta)


def session_report(factory: sessionmaker, name: str, models: Sequence[tuple[ModelRef, Callable[[], object]]], *,
                   method: str = "gradcam", threshold: str = "otsu", rule: str = "true_positive_only",
                   cam_target: str = "expert", reader: str | None = None, compute: bool = True, gallery: int = 3,
                   progress: Callable[[str, int, int], None] | None = None,
                   screeners: Mapping[str, Callable[[np.ndarray], Sequence[str]]] | None = None) -> "SessionReport":
    """The whole flow for one session: hide, read, compute what is missing, score ``method`` and the baseline.

    ``models`` pairs each :class:`ModelRef` with a zero-argument engine loader (see
    :func:`compute_missing`). Blinding as :func:`hidden_for` ``(reader)``. ``screeners`` maps a model
    name to a function giving the reasons it refuses an image's pixels (empty when it may score them,
    see :mod:`cxr_core.screening`); refused images are left out of that model's scores and listed in
    ``report.refused`` with their reasons.
    """
    from cxr_core.binarize import Threshold

    spec = str(Threshold.parse(threshold))
    if rule not in agreement.RULES:
        raise SessionScoresError(f"empty-mask rule {rule!r} unknown; accepted: {', '.join(agreement.RULES)}")
    check_options([method], cam_target)
    if method == BASELINE:
        raise SessionScoresError(f"method {method!r} is the baseline, scored beside every model; choose a CAM method")
    with factory.begin() as s:
        data = read_session(s, name, hidden=hidden_for(s, reader))
    if not data.readings:
        raise SessionScoresError(f"session {name!r} has no submitted reading visible to "
                                 f"{reader or 'an unnamed user'} ({len(data.hidden)} image(s) still read blind)")
    pairsets, scores = [], []
    for model, get_engine in models:
        if compute:
            report_progress = None if progress is None else (lambda d, t, m=model.name: progress(m, d, t))
            compute_missing(factory, data, model, get_engine, method, cam_target=cam_target, progress=report_progress)
        with factory.begin() as s:
            pairs = [load_pairs(s, data, model, m, cam_target=cam_target) for m in (method, BASELINE)]
        for p in pairs:
            pairsets.append(p)
            scores.extend(score_pairs(p, spec, rule))

    def pixels(sha: str) -> np.ndarray:
        with factory.begin() as s:
            return storage.load_pixels(s, sha)

    refused = refusals(data, screeners or {}, pixels)
    blocked = {(r["model"], r["image_id"]) for r in refused}
    scores = [sc for sc in scores if (sc.model, sc.image_id) not in blocked]
    report = build_report(data, pairsets, scores, pixels=pixels, gallery=gallery, rule=rule, cam_target=cam_target)
    return SessionReport(replace(report, refused=tuple(refused)), data, tuple(pairsets))


def refusals(data: SessionData, screeners: Mapping[str, Callable[[np.ndarray], Sequence[str]]],
             pixels: Callable[[str], np.ndarray]) -> list[dict]:
    """``{"image_id", "model", "reasons"}`` for every read image a model's screener refuses."""
    images = {r.image_sha: r.image_id for r in data.readings}
    out = []
    for sha, image_id in images.items() if screeners else ():
        image = pixels(sha)  # decoded once, screened by every model
        for model, screen in screeners.items():
            reasons = list(screen(image))
            if reasons:
                out.append({"image_id": image_id, "model": model, "reasons": reasons})
    return out


@dataclass(frozen=True)
class SessionReport:
    """:func:`session_report`'s answer: the report and what it was made from (for COCO and checks)."""

    report: reports.Report
    data: SessionData
    pairsets: tuple[PairSet, ...]

    def coco(self) -> str:
        """COCO JSON of the expert masks and each scored heatmap's binarised mask."""
        return reports.to_coco(coco_annotations(self.data, self.pairsets, self.report.scores),
                               description=f"CXR Review session {self.data.name}: expert and heatmap masks")


__all__ = ["SessionReport", "build_report", "coco_annotations", "gallery_cases", "refusals", "session_report"]
