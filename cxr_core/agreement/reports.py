"""Agreement records in, report text out: CSV, JSON and a self-contained HTML page.

Every export carries the binarisation method and empty-mask rule of its scores. The HTML comes from
``templates/session_report.html.j2`` through :mod:`cxr_core.io.templating` (autoescaped: a reader,
session or file name is text, never markup) and opens offline: plotly.js, styles and gallery PNGs
are all inline. The pictures live in :mod:`cxr_core.agreement.figures`, the COCO export in
:mod:`cxr_core.agreement.coco`; their names are re-exported here, where callers and the CLI have
always found them (``reports.to_coco``, ``reports.GalleryCase``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np

import cxr_core
from cxr_core.agreement import DiagnosisAgreement, GroupSummary, ImageScore, ReaderPair, ReportError
from cxr_core.agreement.coco import CocoAnnotation, CocoImage, rle_decode, rle_encode, to_coco
from cxr_core.agreement.figures import (
    BASELINE_GREY, EXPERT_RGB, HEATMAP_RGB, METHOD_LABELS, GalleryCase, case_uri, charts_html,
    distribution_figure, make_case, pick_cases, png_data_uri, render_case, series_name,
)
from cxr_core.annotation.consensus import READERS as CONSENSUS_READERS
from cxr_core.io import csv_safe
from cxr_core.io.json_safe import clean

CSV_FIELDS = (*(f.name for f in fields(ImageScore)), "excluded", "not_analysed")
FORMAT = "cxr-review-agreement/1"
#: The summary table's metrics, in column order, with their headings.
SUMMARY_METRICS = (("iou", "IoU"), ("dice", "Dice"), ("hit", "Hit rate"), ("mass", "Relevance mass"),
                   ("rank", "Relevance rank"), ("auc", "Pixel AUC"))


@dataclass(frozen=True)
class Report:
    """Everything one export holds; ``meta`` carries what the caller knows (session, checksums)."""

    title: str
    scores: Sequence[ImageScore]
    groups: Sequence[GroupSummary] = ()
    reader_pairs: Sequence[ReaderPair] = ()
    diagnosis: DiagnosisAgreement | None = None
    gallery: Sequence[GalleryCase] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: Inputs a model refused to score (:func:`cxr_core.analysis.screen_films`): ``{"image_id", "model", "reasons",
    #: "details"}`` each (``details[i]``: the measured figures behind ``reasons[i]``).
    refused: Sequence[Mapping[str, Any]] = ()
    #: Readings whose reader excluded the film (in no number): ``{"image_id", "reader", "reason"}`` each.
    excluded: Sequence[Mapping[str, Any]] = ()
    #: Time per case: ``{"session", "reader" (None: all readers), "n", "untimed", "median_s", "q1_s", "q3_s",
    #: "iqr_s"}`` each (:func:`cxr_core.agreement.session_report.time_rows`).
    times: Sequence[Mapping[str, Any]] = ()


def versions() -> dict[str, str]:
    """Versions of the code that computed the numbers."""
    import sklearn

    return {"cxr_core": cxr_core.__version__, "python": platform.python_version(), "numpy": np.__version__,
            "opencv": cv2.__version__, "scikit-learn": sklearn.__version__}


def to_csv(scores: Sequence[ImageScore], excluded: Sequence[Mapping[str, Any]] = (),
           refused: Sequence[Mapping[str, Any]] = ()) -> str:
    """One row per image × model × reader; undefined metrics are empty cells.

    Each reading its reader excluded (``{"image_id", "reader", "reason"}``, see :attr:`Report.excluded`)
    follows as a row with only ``image_id``, ``reader``, ``session`` and ``excluded`` (the reason)
    filled, so the file says what it leaves out; scored rows have an empty ``excluded`` cell. Each film a
    model refused (:attr:`Report.refused`) follows as a row with ``image_id``, ``model``, ``session`` and
    ``not_analysed``: every reason with its measured figures in brackets.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n", restval="")
    writer.writeheader()
    for s in scores:  # every text cell neutralised: a name like =HYPERLINK(...) stays text in a spreadsheet
        writer.writerow({k: csv_safe.cell(v) for k, v in clean(s.to_dict()).items()})
    session = next((s.session for s in scores), "")
    for e in excluded:
        writer.writerow({k: csv_safe.cell(v) for k, v in {
            "image_id": e.get("image_id", ""), "reader": e.get("reader", ""),
            "session": e.get("session", session), "excluded": e.get("reason") or "excluded"}.items()})
    for r in refused:
        writer.writerow({k: csv_safe.cell(v) for k, v in {
            "image_id": r.get("image_id", ""), "model": r.get("model", ""), "session": session,
            "not_analysed": refusal_text(r)}.items()})
    return buf.getvalue()


def refusal_text(refused: Mapping[str, Any]) -> str:
    """A refused film's reasons, each with its measured figures in brackets, in one line."""
    details = list(refused.get("details", ())) + [""] * len(refused.get("reasons", ()))
    return "; ".join(f"{r} ({d})" if d else str(r) for r, d in zip(refused.get("reasons", ()), details))


TIME_FIELDS = ("session", "reader", "n", "untimed", "median_s", "q1_s", "q3_s", "iqr_s")


def times_csv(times: Sequence[Mapping[str, Any]]) -> str:
    """Time per case as CSV: one row per reader, then ``all readers`` per session; seconds, empty when untimed."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TIME_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in times:
        safe = clean(dict(row))
        writer.writerow({**{k: csv_safe.cell(safe.get(k)) for k in TIME_FIELDS},
                         "reader": csv_safe.cell(row.get("reader") or "all readers")})
    return buf.getvalue()


def excluded_text(excluded: Sequence[Mapping[str, Any]]) -> str:
    """"N readings excluded by readers (reason counts)" for a report's excluded readings."""
    from collections import Counter

    counts = Counter(str(e.get("reason")) for e in excluded)
    n = len(excluded)
    return (f"{n} reading{'s' if n != 1 else ''} excluded by readers "
            f"({', '.join(f'{k} {r}' for r, k in sorted(counts.items()))}): left out of every number.")


def conventions(scores: Sequence[ImageScore]) -> list[str]:
    """The Method section: how the numbers in ``scores`` were made, one sentence per item."""
    thresholds = sorted({s.threshold for s in scores}) or ["otsu"]
    rules = sorted({s.rule for s in scores}) or ["true_positive_only"]
    return [
        "Conventions follow CheXlocalize (Saporta et al., Nature Machine Intelligence 2022) so numbers are "
        "comparable with the literature.",
        "Heatmaps are upsampled bilinearly (OpenCV INTER_LINEAR, pixel-centre aligned) to the X-ray's original "
        "size and min-max normalised per image; a constant heatmap localises nothing.",
        f"Binarisation used here: {', '.join(thresholds)}. 'otsu' is OpenCV's Otsu threshold on uint8(255 x map) "
        "(CheXlocalize's default); a number t keeps pixels with map > t; 'topK%' keeps the K% highest pixels. "
        "Contours of the binary mask are then filled and isolated single pixels dropped (CheXlocalize fills on its "
        "Otsu path only).",
        "IoU = |P and E| / |P or E| and Dice = 2|P and E| / (|P| + |E|) between the binarised heatmap P and the "
        "expert mask E, at the original resolution.",
        f"Empty-mask rule used here: {', '.join(rules)}. 'true_positive_only' (CheXlocalize's default) leaves an "
        "image out of IoU and Dice when either mask is empty; 'full' scores a one-sided empty mask as 0 and leaves "
        "out only images where both are empty.",
        "Pointing-game hit: the heatmap's first maximum pixel lies inside the expert mask (not defined when the "
        "expert mask is empty). Threshold-free: relevance mass = share of the heatmap's sum inside the mask; "
        "relevance rank = share of the top-|E| pixels inside the mask (ties counted by expected share); pixel "
        "AUC = ROC AUC of heatmap values with the mask as label.",
        *(["Consensus pseudo-readers, on films two or more experts read: 'Consensus (majority)' marks pixels more "
           "than half of the readers marked (a tie is left out); 'Consensus (STAPLE, p>=0.5)' keeps pixels whose "
           "STAPLE truth probability (Warfield et al. 2004) is at least 0.5. Their diagnosis is the readers' "
           "majority (uncertain on a tie). Readers are never compared with their own consensus."]
          if any(s.reader in CONSENSUS_READERS for s in scores) else []),
        "Images whose class is Normal have no lesion to localise: they are reported in their own table, never "
        "averaged into the localisation means.",
        "Intervals are 95% percentile bootstrap intervals from 1000 replicates over images (seeded, so a "
        "report can be regenerated exactly): numpy's linear percentiles of the replicate means, the one "
        "convention of every interval CXR Review reports.",
        "Expect modest numbers: published Grad-CAM-versus-radiologist mIoU on chest X-rays is about 0.1-0.3 and "
        "below the human benchmark; a low IoU with a pointing-game hit is common.",
        "Scores describe where a model's heatmap agrees with an expert's marks. They are not diagnoses.",
    ]


def to_json(report: Report) -> str:
    """Everything: per-image scores, groups, reader and diagnosis agreement, method, versions, checksums.

    ``checksums.scores_csv_sha256`` is the SHA-256 of :func:`to_csv` of the same scores and exclusions, so a CSV
    can be matched to its JSON; checksums the caller knows (weights, images) go in ``meta``.
    """
    payload = {
        "format": FORMAT,
        "title": report.title,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": {"thresholds": sorted({s.threshold for s in report.scores}),
                   "rules": sorted({s.rule for s in report.scores}),
                   "conventions": conventions(report.scores)},
        "versions": versions(),
        "checksums": {"scores_csv_sha256": hashlib.sha256(to_csv(report.scores, report.excluded, report.refused)
                                                          .encode()).hexdigest()},
        "meta": report.meta,
        "scores": [s.to_dict() for s in report.scores],
        "groups": [g.to_dict() for g in report.groups],
        "reader_pairs": [asdict(p) for p in report.reader_pairs],
        "diagnosis": report.diagnosis.to_dict() if report.diagnosis else None,
        "refused": [{"image_id": r.get("image_id"), "model": r.get("model"), "reasons": list(r.get("reasons", ())),
                     "details": list(r.get("details", ()))} for r in report.refused],
        "reading_times": [dict(t) for t in report.times],
        "excluded": {"n": len(report.excluded), "note": excluded_text(report.excluded) if report.excluded else None,
                     "readings": [dict(e) for e in report.excluded]},
        "gallery": [{"kind": c.kind, "image_id": c.score.image_id, "model": c.score.model,
                     "reader": c.score.reader, "iou": c.score.iou} for c in report.gallery],
    }
    return json.dumps(clean(payload), indent=2, allow_nan=False, default=str)


def to_html(report: Report) -> str:
    """A self-contained HTML report: summary, charts, worst and best cases, method, provenance.

    Rendered from ``session_report.html.j2`` with autoescape: every name (title, reader, session,
    image, model, refusal reason) is text; only plotly's chart markup is marked safe.
    """
    from cxr_core.io.templating import render

    d = report.diagnosis
    pairs = report.reader_pairs
    ious = np.array([p.iou for p in pairs], float)
    return render(
        "session_report.html.j2",
        title=report.title,
        excluded_note=excluded_text(report.excluded) if report.excluded else None,
        summary_metrics=SUMMARY_METRICS,
        groups=[g for g in report.groups if not g.normal],
        normal=[g for g in report.groups if g.normal],
        diagnosis=d,
        diagnosis_rows=list(zip(d.labels, d.matrix.tolist())) if d is not None else [],
        reader_pairs=pairs,
        reader_mean_iou=float(np.nanmean(ious)) if np.isfinite(ious).any() else None,
        refused=[{"image_id": str(r.get("image_id")), "model": str(r.get("model")),
                  "reasons": [str(x) for x in r.get("reasons", ())],
                  "details": [str(x) for x in r.get("details", ()) if x]} for r in report.refused],
        times=[{k: t.get(k) for k in ("reader", "n", "untimed", "median_s", "q1_s", "q3_s", "iqr_s")}
               for t in report.times],
        charts=charts_html(report.scores),  # plotly's own markup (marked safe in the template); its data is JSON
        gallery=[(kind, [{"uri": case_uri(c), "score": c.score} for c in report.gallery if c.kind == kind])
                 for kind in ("worst", "best") if any(c.kind == kind for c in report.gallery)],
        expert_rgb=str(EXPERT_RGB), heatmap_rgb=str(HEATMAP_RGB),
        method=conventions(report.scores),
        provenance=[(str(k), str(v)) for k, v in {**versions(), **clean(dict(report.meta))}.items()],
    )


__all__ = [
    "BASELINE_GREY", "CSV_FIELDS", "CocoAnnotation", "CocoImage", "EXPERT_RGB", "FORMAT", "GalleryCase",
    "HEATMAP_RGB", "METHOD_LABELS", "Report", "ReportError", "SUMMARY_METRICS", "TIME_FIELDS", "case_uri",
    "conventions", "distribution_figure", "excluded_text", "make_case", "pick_cases", "png_data_uri",
    "refusal_text", "render_case", "rle_decode", "rle_encode", "series_name", "times_csv", "to_coco", "to_csv",
    "to_html", "to_json", "versions",
]
