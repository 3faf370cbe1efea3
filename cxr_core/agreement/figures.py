"""The pictures of an agreement report: gallery cases (the film with both outlines) and distribution charts.

The agreement page and the HTML report (:mod:`cxr_core.agreement.reports`) draw the same pictures
from here, so a film's outlines and a chart's series read the same in both.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from cxr_core.agreement import ImageScore, ReportError

EXPERT_RGB = (0, 114, 178)  # Okabe-Ito blue: the expert's outline
HEATMAP_RGB = (230, 159, 0)  # Okabe-Ito orange: the binarised heatmap's outline


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


#: How charts and tables name a heatmap method; the random baseline is always named as a baseline.
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "random": "random baseline"}
BASELINE_GREY = "#999999"
METRIC_LABELS = {"iou": "IoU", "dice": "Dice", "hit": "Hit (pointing game)", "mass": "Relevance mass",
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

    label = METRIC_LABELS.get(metric, metric)
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


def charts_html(scores: Sequence[ImageScore]) -> str:
    """IoU and relevance-mass distributions per class, model and method (baseline apart); plotly.js inlined once.

    The markup is plotly's own (``Figure.to_html``); the HTML report marks it safe and escapes everything else.
    """
    if not scores:
        return "<p>No scores to chart.</p>"
    parts = []
    for i, metric in enumerate(("iou", "mass")):
        fig = distribution_figure(scores, metric, height=420)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"chart-{metric}"))
    return "\n".join(parts)


__all__ = [
    "BASELINE_GREY", "EXPERT_RGB", "GalleryCase", "HEATMAP_RGB", "METHOD_LABELS", "METRIC_LABELS", "case_uri",
    "charts_html", "distribution_figure", "make_case", "pick_cases", "png_data_uri", "render_case", "series_name",
]
