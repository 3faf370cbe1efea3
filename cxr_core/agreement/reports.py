"""Agreement records in, report text out: CSV, JSON, a self-contained HTML page and COCO masks.

Every export carries the binarisation method and empty-mask rule of its scores. The HTML opens
offline: plotly.js, styles and gallery PNGs are all inline. COCO annotations use uncompressed,
column-major RLE (``{"size": [h, w], "counts": [...]}``, ``iscrowd: 1``), which pycocotools, CVAT
and Label Studio read; it is written and decoded here in numpy.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np

import cxr_core
from cxr_core.io import csv_safe
from cxr_core.annotation.consensus import READERS as CONSENSUS_READERS
from cxr_core.agreement import DiagnosisAgreement, GroupSummary, ImageScore, ReaderPair
from cxr_core.errors import CXRError

EXPERT_RGB = (0, 114, 178)  # Okabe-Ito blue: the expert's outline
HEATMAP_RGB = (230, 159, 0)  # Okabe-Ito orange: the binarised heatmap's outline
CSV_FIELDS = (*(f.name for f in fields(ImageScore)), "excluded")
FORMAT = "cxr-review-agreement/1"
_SUMMARY = (("iou", "IoU"), ("dice", "Dice"), ("hit", "Hit rate"), ("mass", "Relevance mass"),
            ("rank", "Relevance rank"), ("auc", "Pixel AUC"))


class ReportError(CXRError):
    """Records or masks that cannot be written as a report."""


@dataclass(frozen=True)
class GalleryCase:
    """One gallery image: the X-ray with the expert's and the heatmap's outlines.

    ``image`` is (H, W) grayscale, float in [0, 1] or uint8; ``expert`` and ``predicted`` are
    boolean masks of the same size; ``kind`` is ``"worst"`` or ``"best"``.
    """

    score: ImageScore
    image: np.ndarray
    expert: np.ndarray
    predicted: np.ndarray
    kind: str = "worst"


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
    #: Inputs a model refused to score (:mod:`cxr_core.safety.screening`): ``{"image_id", "model", "reasons"}`` each.
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


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf to None, numpy scalars and arrays to Python."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_csv(scores: Sequence[ImageScore], excluded: Sequence[Mapping[str, Any]] = ()) -> str:
    """One row per image × model × reader; undefined metrics are empty cells.

    Each reading its reader excluded (``{"image_id", "reader", "reason"}``, see :attr:`Report.excluded`)
    follows as a row with only ``image_id``, ``reader``, ``session`` and ``excluded`` (the reason)
    filled, so the file says what it leaves out; scored rows have an empty ``excluded`` cell.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n", restval="")
    writer.writeheader()
    for s in scores:  # every text cell neutralised: a name like =HYPERLINK(...) stays text in a spreadsheet
        writer.writerow({k: csv_safe.cell(v) for k, v in _clean(s.to_dict()).items()})
    session = next((s.session for s in scores), "")
    for e in excluded:
        writer.writerow({k: csv_safe.cell(v) for k, v in {
            "image_id": e.get("image_id", ""), "reader": e.get("reader", ""),
            "session": e.get("session", session), "excluded": e.get("reason") or "excluded"}.items()})
    return buf.getvalue()


TIME_FIELDS = ("session", "reader", "n", "untimed", "median_s", "q1_s", "q3_s", "iqr_s")


def times_csv(times: Sequence[Mapping[str, Any]]) -> str:
    """Time per case as CSV: one row per reader, then ``all readers`` per session; seconds, empty when untimed."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TIME_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in times:
        clean = _clean(dict(row))
        writer.writerow({**{k: csv_safe.cell(clean.get(k)) for k in TIME_FIELDS},
                         "reader": csv_safe.cell(row.get("reader") or "all readers")})
    return buf.getvalue()


def _seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def times_table(times: Sequence[Mapping[str, Any]]) -> str:
    """The HTML table of time per case: median and interquartile range per reader and for all readers."""
    rows = [[html.escape(str(t.get("reader") or "all readers")), str(t.get("n", 0)), str(t.get("untimed", 0)),
             _seconds(t.get("median_s")),
             "–" if t.get("iqr_s") is None else f"{_seconds(t.get('iqr_s'))} ({_seconds(t.get('q1_s'))} to "
                                               f"{_seconds(t.get('q3_s'))})"] for t in times]
    return _table(["reader", "timed readings", "untimed", "median time", "IQR (25th to 75th percentile)"], rows)


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
        "report can be regenerated exactly), as CheXlocalize's compute_cis.",
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
        "checksums": {"scores_csv_sha256": hashlib.sha256(to_csv(report.scores, report.excluded).encode())
                      .hexdigest()},
        "meta": report.meta,
        "scores": [s.to_dict() for s in report.scores],
        "groups": [g.to_dict() for g in report.groups],
        "reader_pairs": [asdict(p) for p in report.reader_pairs],
        "diagnosis": report.diagnosis.to_dict() if report.diagnosis else None,
        "refused": [{"image_id": r.get("image_id"), "model": r.get("model"), "reasons": list(r.get("reasons", ()))}
                    for r in report.refused],
        "reading_times": [dict(t) for t in report.times],
        "excluded": {"n": len(report.excluded), "note": excluded_text(report.excluded) if report.excluded else None,
                     "readings": [dict(e) for e in report.excluded]},
        "gallery": [{"kind": c.kind, "image_id": c.score.image_id, "model": c.score.model,
                     "reader": c.score.reader, "iou": c.score.iou} for c in report.gallery],
    }
    return json.dumps(_clean(payload), indent=2, allow_nan=False, default=str)


def make_case(score: ImageScore, image: np.ndarray, expert: np.ndarray, heatmap: np.ndarray,
              kind: str = "worst") -> GalleryCase:
    """A gallery case whose heatmap outline is binarised exactly as ``score`` was (its threshold)."""
    from cxr_core.explain.binarize import Threshold, binarize, upsample

    spec = Threshold.parse(score.threshold)
    predicted = binarize(upsample(heatmap, np.shape(image)), method=spec.method, value=spec.value)
    return GalleryCase(score, np.asarray(image), np.asarray(expert, bool), predicted, kind)


def pick_cases(scores: Sequence[ImageScore], k: int = 3, metric: str = "iou"
               ) -> tuple[list[ImageScore], list[ImageScore]]:
    """The ``k`` lowest and ``k`` highest scores by ``metric`` (undefined ones skipped, no overlap)."""
    ranked = sorted((s for s in scores if math.isfinite(getattr(s, metric))), key=lambda s: getattr(s, metric))
    worst = ranked[:k]
    best = [s for s in reversed(ranked[len(worst):])][:k]
    return worst, best


def render_case(image: np.ndarray, expert: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The X-ray in gray with the expert's outline (blue) and the heatmap mask's outline (orange).

    Parameters
    ----------
    image : (H, W) ndarray, float in [0, 1] or uint8
    expert, predicted : (H, W) boolean ndarray

    Returns
    -------
    (H, W, 3) uint8 RGB ndarray
        Outlines are ``max(1, round(max(H, W) / 256))`` pixels thick, drawn along each mask's
        contours (holes included); the heatmap's is drawn last, over the expert's.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ReportError(f"gallery image must be 2-D grayscale; got shape {img.shape}")
    for name, m in (("expert", expert), ("predicted", predicted)):
        if np.shape(m) != img.shape:
            raise ReportError(f"{name} mask shape {np.shape(m)} differs from image shape {img.shape}")
    if img.dtype == np.uint8:
        gray = img
    else:
        gray = (np.clip(np.nan_to_num(img.astype(float)), 0, 1) * 255).round().astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    thickness = max(1, round(max(img.shape) / 256))
    for mask, colour in ((expert, EXPERT_RGB), (predicted, HEATMAP_RGB)):
        contours = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)[0]
        cv2.drawContours(rgb, contours, -1, colour, thickness)
    return rgb


def png_data_uri(rgb: np.ndarray) -> str:
    """``data:image/png;base64,...`` for an (H, W, 3) uint8 RGB array."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ReportError(f"could not encode a PNG from an array of shape {np.shape(rgb)}")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def case_uri(case: GalleryCase) -> str:
    """The data URI the HTML report embeds for one gallery case."""
    return png_data_uri(render_case(case.image, case.expert, case.predicted))


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _cell(iv) -> str:
    if not math.isfinite(iv.mean):
        return "–"
    return f"{iv.mean:.3f} [{_fmt(iv.lo)}, {_fmt(iv.hi)}] <small>n={iv.n}</small>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _groups_table(groups: Sequence[GroupSummary]) -> str:
    if not groups:
        return "<p>No images.</p>"
    keys = list(groups[0].group)
    rows = [[html.escape(str(g.group[k])) for k in keys] + [str(g.n_images)]
            + [_cell(g.metrics[m]) if m in g.metrics else "–" for m, _ in _SUMMARY] for g in groups]
    return _table([*keys, "images", *(label for _, label in _SUMMARY)], rows)


#: How charts and tables name a heatmap method; the random baseline is always named as a baseline.
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "random": "random baseline"}
BASELINE_GREY = "#999999"
_METRIC_LABELS = {"iou": "IoU", "dice": "Dice", "hit": "Hit (pointing game)", "mass": "Relevance mass",
                  "rank": "Relevance rank", "auc": "Pixel AUC"}


def series_name(model: str, method: str) -> str:
    """A chart series' name: ``"model · Grad-CAM"`` or ``"model · random baseline"``."""
    return f"{model} · {METHOD_LABELS.get(method, method)}"


def distribution_figure(scores: Sequence[ImageScore], metric: str, *, height: int = 380):
    """Box plots of ``metric`` per expert's class (x), one labelled series per model × method.

    The random baseline is its own grey series after its model's CAM method, never pooled with it;
    the agreement page and the HTML report draw the same figure.
    """
    import plotly.graph_objects as go

    label = _METRIC_LABELS.get(metric, metric)
    fig = go.Figure()
    for model, method in sorted({(s.model, s.method) for s in scores}, key=lambda mm: (mm[0], mm[1] == "random")):
        rows = [s for s in scores if (s.model, s.method) == (model, method) and math.isfinite(getattr(s, metric))]
        baseline = method == "random"
        fig.add_trace(go.Box(x=[s.target for s in rows], y=[float(getattr(s, metric)) for s in rows],
                             boxpoints="all", jitter=0.3, name=series_name(model, method),
                             marker_color=BASELINE_GREY if baseline else None))
    fig.update_layout(boxmode="group", yaxis_title=label, yaxis_range=[0, 1.02], height=height,
                      xaxis_title="expert's class", margin=dict(l=50, r=20, t=30, b=40),
                      title=f"{label} per class and model", legend=dict(orientation="h", y=-0.25))
    return fig


def _charts(scores: Sequence[ImageScore]) -> str:
    """IoU and relevance-mass distributions per class, model and method (baseline apart); plotly.js inlined once."""
    if not scores:
        return "<p>No scores to chart.</p>"
    parts = []
    for i, metric in enumerate(("iou", "mass")):
        fig = distribution_figure(scores, metric, height=420)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"chart-{metric}"))
    return "\n".join(parts)


def _gallery(cases: Sequence[GalleryCase]) -> str:
    blocks = []
    for kind in ("worst", "best"):
        figs = []
        for c in (c for c in cases if c.kind == kind):
            s = c.score
            caption = (f"{html.escape(s.image_id)} · {html.escape(s.model)} · reader {html.escape(s.reader)} · "
                       f"IoU {_fmt(s.iou)} · hit {_fmt(s.hit, 0)} · mass {_fmt(s.mass)}")
            figs.append(f'<figure><img src="{case_uri(c)}" alt="{html.escape(s.image_id)}">'
                        f"<figcaption>{caption}</figcaption></figure>")
        if figs:
            blocks.append(f"<h3>{kind.capitalize()} agreement</h3><div class='gallery'>{''.join(figs)}</div>")
    legend = (f"<p><span style='color:rgb{EXPERT_RGB}'>■</span> expert outline &nbsp; "
              f"<span style='color:rgb{HEATMAP_RGB}'>■</span> binarised heatmap outline</p>")
    return legend + "".join(blocks) if blocks else "<p>No gallery cases.</p>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}.note{background:#fff6e0;padding:.6em;border-left:4px solid #e69f00}
.gallery{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;max-width:360px}figure img{width:100%}
figcaption{font-size:.8em}"""


def to_html(report: Report) -> str:
    """A self-contained HTML report: summary, charts, worst and best cases, method, provenance."""
    groups = [g for g in report.groups if not g.normal]
    normal = [g for g in report.groups if g.normal]
    sections = [
        f"<h1>{html.escape(report.title)}</h1>",
        "<p class='note'>These numbers describe where model heatmaps agree with expert marks. "
        "Model scores are not diagnoses.</p>",
        *([f"<p class='note' id='excluded'>{html.escape(excluded_text(report.excluded))}</p>"]
          if report.excluded else []),
        "<h2>Summary (mean [95% CI])</h2>", _groups_table(groups),
        "<h2>Normal images (reported apart)</h2>", _groups_table(normal),
    ]
    if report.diagnosis is not None:
        d = report.diagnosis
        rows = [[html.escape(lab)] + [str(v) for v in row] for lab, row in zip(d.labels, d.matrix.tolist())]
        sections += ["<h2>Expert versus model diagnosis</h2>",
                     f"<p>Cohen's kappa {_fmt(d.kappa)} [{_fmt(d.kappa_lo)}, {_fmt(d.kappa_hi)}], "
                     f"agreement {d.agreement:.1%} over {d.n} images (rows: expert, columns: model).</p>",
                     _table(["expert \\ model", *d.labels], rows)]
    if report.reader_pairs:
        ious = np.array([p.iou for p in report.reader_pairs], float)
        rows = [[html.escape(p.image_id), html.escape(p.reader_a), html.escape(p.reader_b), _fmt(p.iou), _fmt(p.dice)]
                for p in report.reader_pairs]
        sections += ["<h2>Reader versus reader</h2>",
                     f"<p>Mean IoU {_fmt(float(np.nanmean(ious)) if np.isfinite(ious).any() else math.nan)} "
                     f"over {len(rows)} pairs.</p>", _table(["image", "reader A", "reader B", "IoU", "Dice"], rows)]
    if report.refused:
        rows = [[html.escape(str(r.get("image_id"))), html.escape(str(r.get("model"))),
                 html.escape("; ".join(r.get("reasons", ())))] for r in report.refused]
        sections += ["<h2>Not analysed</h2>",
                     f"<p>{len(rows)} image(s) did not look like a frontal chest X-ray to a model and were not "
                     "scored; they are in no number above.</p>", _table(["image", "model", "reasons"], rows)]
    if report.times:
        sections += ["<h2>Time per case</h2>",
                     "<p>From the film first being shown to the reading being submitted (server clock), every "
                     "submitted version; untimed versions (no recorded start) are counted apart, never guessed.</p>",
                     times_table(report.times)]
    sections += ["<h2>Distributions</h2>", _charts(report.scores),
                 "<h2>Gallery</h2>", _gallery(report.gallery),
                 "<h2>Method</h2>", "".join(f"<p>{html.escape(t)}</p>" for t in conventions(report.scores)),
                 "<h2>Provenance</h2>",
                 _table(["item", "value"], [[html.escape(str(k)), html.escape(str(v))] for k, v in
                                            {**versions(), **_clean(dict(report.meta))}.items()])]
    body = "\n".join(sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")


def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths of the column-major flattened mask, zeros first.

    Examples
    --------
    >>> rle_encode(np.array([[0, 1, 1], [0, 0, 1]], bool))
    {'size': [2, 3], 'counts': [2, 1, 1, 2]}
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ReportError(f"RLE needs a 2-D mask; got shape {m.shape}")
    flat = m.astype(bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], change, [flat.size])))
    if flat.size and flat[0]:
        counts = np.concatenate(([0], counts))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Boolean (h, w) mask from uncompressed COCO RLE (:func:`rle_encode`'s inverse)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise ReportError(f"RLE must be {{'size': [h, w], 'counts': [...]}}; got {rle!r:.80}") from None
    if isinstance(counts, (str, bytes)):
        raise ReportError("compressed (string) RLE is not supported; accepted: a list of run lengths")
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any() or runs.sum() != h * w:
        raise ReportError(f"RLE run lengths must be non-negative and sum to h*w = {h * w}; got sum {runs.sum()}")
    flat = np.repeat(np.arange(runs.size) % 2 == 1, runs)
    return flat.reshape((h, w), order="F")


@dataclass(frozen=True)
class CocoAnnotation:
    """One mask to export: an expert's drawn region (``source="expert"``), a consensus or a binarised heatmap.

    ``polygon`` (COCO ``[x1, y1, x2, y2, ...]`` in image pixels, pixel edges at integers) is written
    instead of RLE when the region was drawn with straight edges; ``mask`` is then its rasterisation
    (area and box come from it).
    """

    image_id: str
    file_name: str
    category: str
    mask: np.ndarray
    reader: str = ""
    source: str = "expert"
    attributes: Mapping[str, Any] = field(default_factory=dict)
    polygon: Sequence[float] | None = None


@dataclass(frozen=True)
class CocoImage:
    """An image to list whether or not it has a mask (a Normal or excluded reading), with its attributes."""

    image_id: str
    file_name: str
    height: int
    width: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


def to_coco(annotations: Sequence[CocoAnnotation], *, categories: Sequence[str] | None = None,
            images: Sequence[CocoImage] = (), description: str = "CXR Review annotations") -> str:
    """COCO JSON that pycocotools, CVAT and Label Studio read: polygons (``iscrowd: 0``) or RLE (``iscrowd: 1``).

    ``images`` are listed first, then images met in annotations, numbered from 1; categories in the
    order given (or sorted). Empty masks list their image but add no annotation. Our own ids,
    reader and source are kept in each annotation's ``attributes``.
    """
    names = list(categories) if categories is not None else sorted({a.category for a in annotations})
    cat_ids = {name: i + 1 for i, name in enumerate(names)}
    listed: dict[str, dict] = {}
    for im in images:
        listed[im.image_id] = {"id": len(listed) + 1, "file_name": im.file_name, "height": int(im.height),
                               "width": int(im.width), "attributes": _clean(dict(im.attributes))}
    out = []
    for a in annotations:
        if a.category not in cat_ids:
            raise ReportError(f"category {a.category!r} not among {names}")
        mask = np.asarray(a.mask).astype(bool)
        if mask.ndim != 2:
            raise ReportError(f"annotation for {a.image_id!r}: mask must be 2-D; got shape {mask.shape}")
        entry = listed.setdefault(a.image_id, {"id": len(listed) + 1, "file_name": a.file_name,
                                               "height": int(mask.shape[0]), "width": int(mask.shape[1])})
        if (entry["height"], entry["width"]) != mask.shape:
            raise ReportError(
                f"image {a.image_id!r} has masks of sizes {(entry['height'], entry['width'])} and {mask.shape}")
        if not mask.any():
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        out.append({
            "id": len(out) + 1, "image_id": entry["id"], "category_id": cat_ids[a.category],
            "segmentation": rle_encode(mask) if a.polygon is None else [[round(float(v), 3) for v in a.polygon]],
            "area": int(mask.sum()),
            "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)],
            "iscrowd": 1 if a.polygon is None else 0,
            "attributes": _clean({"image_key": a.image_id, "reader": a.reader, "source": a.source, **a.attributes}),
        })
    payload = {
        "info": {"description": description, "version": cxr_core.__version__,
                 "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "licenses": [],
        "images": list(listed.values()),
        "annotations": out,
        "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in cat_ids.items()],
    }
    return json.dumps(payload, allow_nan=False)
