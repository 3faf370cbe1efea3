"""Temperature scaling and calibration metrics, so that "0.95" means right 95 % of the time.

Temperature scaling [1]_ divides a model's logits by one scalar T fitted on a validation split
by minimising negative log-likelihood. T > 1 softens an over-confident model; the arg-max, and
so the predicted class, never changes. Metrics follow the usual definitions: expected
calibration error over equal-width bins of the top-label confidence, multiclass Brier score,
and negative log-likelihood.

References
----------
.. [1] Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from cxr_core.errors import CXRError

_EPS = 1e-12
T_BOUNDS = (0.05, 50.0)


class CalibrationError(CXRError):
    """Logits, probabilities or labels of the wrong shape or content."""


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin mean confidence, accuracy and count; empty bins hold NaN and 0."""

    edges: np.ndarray  # (n_bins + 1,)
    confidence: np.ndarray  # (n_bins,)
    accuracy: np.ndarray  # (n_bins,)
    count: np.ndarray  # (n_bins,) int

    def to_dict(self) -> dict:
        nan_none = lambda a: [None if math.isnan(v) else float(v) for v in a]  # noqa: E731
        return {"edges": [float(e) for e in self.edges], "confidence": nan_none(self.confidence),
                "accuracy": nan_none(self.accuracy), "count": [int(c) for c in self.count]}


@dataclass(frozen=True)
class CalibrationReport:
    """Calibration of one model on one split, before and after temperature scaling."""

    temperature: float
    n: int
    n_bins: int
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    nll_before: float
    nll_after: float
    bins_before: ReliabilityBins
    bins_after: ReliabilityBins

    def to_dict(self) -> dict:
        """JSON-ready, for the model card."""
        d = {k: v for k, v in asdict(self).items() if not k.startswith("bins_")}
        d["bins_before"] = self.bins_before.to_dict()
        d["bins_after"] = self.bins_after.to_dict()
        return d


def _check(scores: np.ndarray, labels: np.ndarray | None = None, what: str = "logits"):
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] < 2:
        raise CalibrationError(f"{what} must be an (N, K) array with N >= 1 and K >= 2, got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise CalibrationError(f"{what} contain NaN or infinite values")
    if labels is None:
        return s, None
    y = np.asarray(labels)
    if y.shape != (s.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise CalibrationError(f"labels must be {s.shape[0]} integers, got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= s.shape[1]:
        raise CalibrationError(f"labels must lie in 0..{s.shape[1] - 1}, got {y.min()}..{y.max()}")
    return s, y


def _check_probs(probs: np.ndarray, labels: np.ndarray):
    p, y = _check(probs, labels, "probabilities")
    if p.min() < 0 or p.max() > 1 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise CalibrationError("probabilities must lie in [0, 1] and sum to 1 per row")
    return p, y


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def logits_from_probabilities(probs: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Log of clipped probabilities: logits whose softmax gives back ``probs`` (up to clipping)."""
    p, _ = _check(probs, what="probabilities")
    return np.log(np.clip(p, eps, 1.0))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / T)``."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise CalibrationError(f"temperature must be a positive number, got {temperature}")
    z, _ = _check(logits)
    return softmax(z / temperature)


def _nll_of_logits(z: np.ndarray, y: np.ndarray) -> float:
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds=T_BOUNDS) -> float:
    """Temperature minimising the negative log-likelihood of ``softmax(logits / T)``.

    Searches log T in ``bounds`` (bounded Brent), so T stays positive and an all-correct
    validation set cannot push it to zero. For probabilities, pass
    ``logits_from_probabilities(probs)``.

    Parameters
    ----------
    logits : (N, K) ndarray
    labels : (N,) ndarray of int

    Returns
    -------
    float
        T > 1 softens over-confident scores, T < 1 sharpens under-confident ones.
    """
    from scipy.optimize import minimize_scalar

    z, y = _check(logits, labels)
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda t: _nll_of_logits(z / np.exp(t), y), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of -log p(true class), probabilities clipped at 1e-12."""
    p, y = _check_probs(probs, labels)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over samples of sum_k (p_k - y_k)^2 (0 is perfect, 2 is the worst)."""
    p, y = _check_probs(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Top-label confidence and accuracy in equal-width bins ((i-1)/n, i/n]."""
    p, y = _check_probs(probs, labels)
    if n_bins < 1:
        raise CalibrationError(f"n_bins must be at least 1, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")  # right-closed bins, exact at edges
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        acc = np.bincount(idx, correct, n_bins) / count
    return ReliabilityBins(edges, mean_conf, acc, count)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Sum over bins of (bin count / N) * |accuracy - mean confidence|.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.6, 0.4]])
    >>> round(expected_calibration_error(p, np.array([0, 1]), n_bins=2), 3)
    0.25
    """
    b = reliability_bins(probs, labels, n_bins)
    filled = b.count > 0
    gap = np.abs(b.accuracy[filled] - b.confidence[filled])
    return float(np.sum(b.count[filled] * gap) / b.count.sum())


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, temperature: float | None = None, n_bins: int = 15
) -> CalibrationReport:
    """Metrics before and after scaling; fits T on these rows unless ``temperature`` is given.

    Fit T on the validation split and pass it here with the test split for honest numbers.
    """
    z, y = _check(logits, labels)
    t = fit_temperature(z, y) if temperature is None else float(temperature)
    before, after = softmax(z), apply_temperature(z, t)
    return CalibrationReport(
        temperature=t, n=len(y), n_bins=n_bins,
        ece_before=expected_calibration_error(before, y, n_bins),
        ece_after=expected_calibration_error(after, y, n_bins),
        brier_before=brier_score(before, y), brier_after=brier_score(after, y),
        nll_before=negative_log_likelihood(before, y), nll_after=negative_log_likelihood(after, y),
        bins_before=reliability_bins(before, y, n_bins), bins_after=reliability_bins(after, y, n_bins),
    )


def reliability_figure(report_or_bins: CalibrationReport | ReliabilityBins, title: str | None = None):
    """Plotly reliability diagram: accuracy per confidence bin against the diagonal."""
    import plotly.graph_objects as go

    if isinstance(report_or_bins, CalibrationReport):
        r = report_or_bins
        series = [(f"before (ECE {r.ece_before:.3f})", r.bins_before),
                  (f"after T={r.temperature:.2f} (ECE {r.ece_after:.3f})", r.bins_after)]
    elif isinstance(report_or_bins, ReliabilityBins):
        series = [("model", report_or_bins)]
    else:
        raise CalibrationError(
            f"expected a CalibrationReport or ReliabilityBins, got {type(report_or_bins).__name__}"
        )
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"dash": "dash", "color": "gray"}))
    for name, b in series:
        centres = (b.edges[:-1] + b.edges[1:]) / 2
        filled = b.count > 0
        fig.add_trace(go.Bar(x=centres[filled], y=b.accuracy[filled], name=name,
                             width=float(b.edges[1] - b.edges[0]) * 0.9, opacity=0.6,
                             customdata=np.c_[b.confidence[filled], b.count[filled]],
                             hovertemplate="accuracy %{y:.2f}<br>mean confidence "
                             "%{customdata[0]:.2f}<br>n = %{customdata[1]}<extra></extra>"))
    fig.update_layout(title=title or "Reliability diagram", barmode="overlay",
                      xaxis={"title": "confidence (top class)", "range": [0, 1]},
                      yaxis={"title": "accuracy", "range": [0, 1]})
    return fig
