"""Plotly figures and tables the pages show: pure functions of plain data, no Streamlit.

Every figure speaks of "model scores", never of diagnoses.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

#: Bar colours: the predicted (top) class stands out, the others stay quiet.
TOP_COLOUR, OTHER_COLOUR = "#d62728", "#9aa5b1"

#: The study's Table 2 columns, in order: (card key, header, shown as a percentage).
TABLE2_COLUMNS = (
    ("accuracy", "Accuracy", True),
    ("loss", "Loss", False),
    ("auc", "AUC", True),
    ("f1", "F1", True),
    ("recall", "Recall", True),
    ("precision", "Precision", True),
)


def score_bars(classes: Sequence[str], probabilities: Sequence[float], *, title: str = "Model scores",
               height: int = 260):
    """Horizontal bars of class scores, highest on top, the top class highlighted, values in percent.

    Parameters
    ----------
    classes : the model's classes, in output order.
    probabilities : one score in [0, 1] per class.
    """
    import plotly.graph_objects as go

    probs = np.asarray(probabilities, dtype=float)
    if len(classes) != len(probs):
        raise ValueError(f"{len(classes)} classes but {len(probs)} scores")
    order = np.argsort(probs, kind="stable")  # ascending: plotly draws the last bar on top
    top = int(np.argmax(probs))
    labels = [classes[i] for i in order]
    values = [100.0 * probs[i] for i in order]
    colours = [TOP_COLOUR if i == top else OTHER_COLOUR for i in order]
    fig = go.Figure(go.Bar(
        x=values, y=labels, orientation="h", marker_color=colours,
        text=[f"{v:.1f}%" for v in values], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: model score %{x:.1f}%<extra></extra>",
    ))
    fig.update_layout(
        title={"text": title, "font": {"size": 14}}, height=height, margin={"l": 10, "r": 40, "t": 40, "b": 40},
        xaxis={"title": "model score (%), not a diagnosis", "range": [0, 112], "ticksuffix": "%"},
        yaxis={"automargin": True}, showlegend=False,
    )
    return fig


@functools.lru_cache(maxsize=256)
def _score_bars_cached(classes: tuple[str, ...], probabilities: tuple[float, ...], title: str, height: int):
    return score_bars(classes, probabilities, title=title, height=height)


def cached_score_bars(classes: Sequence[str], probabilities: Sequence[float], *, title: str = "Model scores",
                      height: int = 260):
    """:func:`score_bars`, built once per scores, title and height (building a plotly figure validates every
    property: about 40 ms, on every rerun of a page otherwise). The figure is shared: do not change it."""
    return _score_bars_cached(tuple(classes), tuple(float(p) for p in probabilities), title, height)


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], *,
                     title: str = "Confusion matrix (test set)"):
    """Heatmap of a confusion matrix: rows are the true class, columns the model's top class."""
    import plotly.graph_objects as go

    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix has shape {m.shape}; expected {len(classes)}x{len(classes)} "
                         f"for {list(classes)}")
    row_share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(
        z=row_share, x=list(classes), y=list(classes), colorscale="Blues", zmin=0, zmax=1,
        text=[[f"{int(v)}" for v in row] for row in m], texttemplate="%{text}",
        customdata=100 * row_share, colorbar={"title": "share of row"},
        hovertemplate="true %{y}, model %{x}: %{text} images (%{customdata:.1f}% of row)<extra></extra>",
    ))
    fig.update_layout(
        title={"text": title, "font": {"size": 14}}, height=360, margin={"t": 50, "b": 40},
        xaxis={"title": "model's top class", "side": "bottom"}, yaxis={"title": "true class", "autorange": "reversed"},
    )
    return fig


def roc_figure(roc: dict, auc_by_class: dict | None = None, *, title: str = "ROC curves, one class against the rest"):
    """ROC curves from ``{class: {"fpr": [...], "tpr": [...]}}``, with each class's AUC in the legend."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dash", "color": "gray"}))
    for cls, curve in roc.items():
        auc = (auc_by_class or {}).get(cls)
        name = f"{cls} (AUC {100 * auc:.1f}%)" if isinstance(auc, (int, float)) else cls
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=name))
    fig.update_layout(
        title={"text": title, "font": {"size": 14}}, height=360, margin={"t": 50, "b": 40},
        xaxis={"title": "false positive rate", "range": [0, 1]},
        yaxis={"title": "true positive rate", "range": [0, 1.02]},
    )
    return fig


def _cell(value, ci, pct: bool) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    fmt = (lambda v: f"{100 * v:.2f}%") if pct else (lambda v: f"{v:.4f}")
    if ci and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]"
    return fmt(value)


def table2_rows(name: str, metrics: dict) -> list[dict]:
    """The study's Table 2 row(s) for one model card's ``metrics``: macro scores with 95% intervals.

    Returns one row for the whole test set; per-class rows follow when the card has them.
    """
    ci = metrics.get("ci95") or {}
    rows = [{"Model": name, **{h: _cell(metrics.get(k), ci.get(k), pct) for k, h, pct in TABLE2_COLUMNS}}]
    per_class_ci = ci.get("per_class") or {}
    for cls, values in (metrics.get("per_class") or {}).items():
        cci = per_class_ci.get(cls) or {}
        row = {"Model": f"{name}: {cls}"}
        for k, h, pct in TABLE2_COLUMNS:
            row[h] = _cell(values.get(k), cci.get(k), pct) if k in values else "—"
        if "support" in values:
            row["Test images"] = str(values["support"])
        rows.append(row)
    return rows


def has_table2(metrics: dict) -> bool:
    """True when ``metrics`` holds at least one of the Table 2 scalars."""
    return any(isinstance(metrics.get(k), (int, float)) for k, _, _ in TABLE2_COLUMNS)


def metric_splits(metrics: dict) -> dict[str, dict]:
    """``{split: metrics}`` from a card's ``metrics``: either one flat record or one per split (``{"test": ...}``)."""
    if has_table2(metrics):
        return {"test": metrics}
    return {k: v for k, v in metrics.items() if isinstance(v, dict) and has_table2(v)}


def scalar_rows(record: dict, prefix: str = "") -> list[dict]:
    """Every number in a nested record as ``{"Measure", "Value"}`` rows (lists and reliability bins skipped)."""
    rows = []
    for key, value in record.items():
        label = f"{prefix}{str(key).replace('_', ' ')}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            rows.append({"Measure": label, "Value": f"{value:.4g}"})
        elif isinstance(value, str):
            rows.append({"Measure": label, "Value": value})
        elif isinstance(value, dict) and not _is_bins(value):
            rows.extend(scalar_rows(value, prefix=f"{label} / "))
    return rows


def _is_bins(d) -> bool:
    return isinstance(d, dict) and {"confidence", "accuracy", "count"} <= set(d)


def find_reliability(record: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """``(label, bins)`` for every reliability-bin record (``confidence``, ``accuracy``, ``count``) in ``record``."""
    found = []
    for key, value in record.items():
        label = f"{prefix}{str(key).replace('bins_', '').replace('_', ' ')}"
        if _is_bins(value):
            found.append((label, value))
        elif isinstance(value, dict):
            found.extend(find_reliability(value, prefix=f"{label} / "))
    return found


def reliability_figure(series: Sequence[tuple[str, dict]], *, title: str = "Reliability diagram"):
    """Accuracy against mean confidence per bin, one line per series, next to the diagonal."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"dash": "dash", "color": "gray"}))
    for name, bins in series:
        points = [(c, a, n) for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"])
                  if c is not None and a is not None and n]
        if points:
            conf, acc, count = zip(*points)
            fig.add_trace(go.Scatter(x=conf, y=acc, mode="lines+markers", name=name, customdata=count,
                                     hovertemplate="mean score %{x:.2f}, right %{y:.0%} "
                                                   "(n=%{customdata})<extra></extra>"))
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=360, margin={"t": 50, "b": 40},
                      xaxis={"title": "mean top-class score in bin", "range": [0, 1]},
                      yaxis={"title": "share correct", "range": [0, 1.02]})
    return fig


# --- heatmap sanity checks (cxr_core.explain.sanity records) ---------------------------------------------

def sanity_cascade_figure(cascade: Sequence[dict], threshold: float = 0.5, *,
                          title: str = "Cascading randomisation, from the output layer down"):
    """|Spearman rho| and SSIM between original and randomised heatmaps, one point per cascade step.

    Each step adds one more block, from the top, with random weights; error bars are 95% bootstrap
    intervals over films. A method whose maps depend on the learned weights falls towards 0.
    """
    import plotly.graph_objects as go

    blocks = [row["block"] for row in cascade]
    fig = go.Figure()
    for key, name in (("spearman_abs", "|Spearman rho|"), ("ssim", "SSIM")):
        means = [row[key]["mean"] for row in cascade]
        lo = [m - row[key]["ci95"][0] if m is not None else None for m, row in zip(means, cascade)]
        hi = [row[key]["ci95"][1] - m if m is not None else None for m, row in zip(means, cascade)]
        fig.add_trace(go.Scatter(
            x=blocks, y=means, mode="lines+markers", name=name,
            error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
            hovertemplate=f"randomised down to %{{x}}: {name} %{{y:.3f}}<extra></extra>",
        ))
    fig.add_hline(y=threshold, line={"dash": "dash", "color": "gray"},
                  annotation_text=f"pass line: |rho| < {threshold}", annotation_position="top right")
    fig.update_layout(
        title={"text": title, "font": {"size": 14}}, height=360, margin={"t": 50, "b": 40},
        xaxis={"title": "randomised from the output down to this block", "type": "category"},
        yaxis={"title": "similarity to the original heatmap", "range": [-0.1, 1.05]},
    )
    return fig


def faithfulness_rows(faithfulness: dict, baseline: dict) -> list[dict]:
    """Deletion and insertion AUC of a method beside the random-heatmap baseline's, with 95% intervals."""
    rows = []
    for mode, better in (("deletion", "lower"), ("insertion", "higher")):
        ours, rand = (faithfulness.get(mode) or {}).get("auc") or {}, (baseline.get(mode) or {}).get("auc") or {}
        rows.append({
            "Curve": f"{mode.capitalize()} AUC ({better} is better)",
            "This method": _cell(ours.get("mean"), ours.get("ci95"), False),
            "Random heatmap": _cell(rand.get("mean"), rand.get("ci95"), False),
        })
    return rows
