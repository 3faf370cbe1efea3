"""The feature detector: how far a film's features lie from the model's training films.

:class:`FeatureOOD` scores the distance of a model's (or the lung model's) penultimate features to the
training set (k-th nearest neighbour on L2-normalised features [2]_, or class-conditional Mahalanobis with
a shared Ledoit-Wolf covariance [1]_), thresholded at a high percentile of held-out in-distribution scores
so that few real films are refused. :mod:`cxr_core.safety.ood` holds the pixel and header checks that run
before it; :mod:`cxr_core.safety.screening` fits and applies both per model.

References
----------
.. [1] Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
   Adversarial Attacks", NeurIPS 2018.
.. [2] Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_core.safety.ood import Finding, OODDecision, OODError

#: The feature detector's defaults (one home: ``screening`` and ``calibrate`` use these).
#: k = 1 and the 99.5th percentile: ``bench/bench_ood.py`` measured at most 1 % of real films of new
#: patients refused with at least 99 % of its non-chest inputs refused.
DEFAULT_METHOD = "knn"
DEFAULT_K = 1
DEFAULT_PERCENTILE = 99.5
#: Plain-language sentence of every refusal by the feature detector.
DETECTOR_REASON = ("This does not look like a frontal chest film: it is unlike every chest film the model "
                   "was trained on.")

def _check_features(features: np.ndarray, dim: int | None = None) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] == 0:
        raise OODError(f"features must be a non-empty (N, D) array, got shape {f.shape}")
    if dim is not None and f.shape[1] != dim:
        raise OODError(f"features have {f.shape[1]} dimensions, the detector was fitted on {dim}")
    if not np.all(np.isfinite(f)):
        raise OODError("features contain NaN or infinite values")
    return f


def _unit(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


@dataclass(eq=False)
class FeatureOOD:
    """Distance of penultimate-layer features to the training set; higher means more unusual.

    Build with ``FeatureOOD.fit``; ``score`` any features of the same width; ``decide`` turns a
    score into an ``OODDecision``. ``save``/``load`` keep it next to the model file.
    """

    method: str
    means: np.ndarray  # (C, D) class means (Mahalanobis) or empty
    precision: np.ndarray  # (D, D) shared precision matrix (Mahalanobis) or empty
    bank: np.ndarray  # (M, D) L2-normalised training features (k-NN) or empty
    k: int = 1
    threshold: float = float("inf")
    percentile: float = float("nan")

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        method: str = DEFAULT_METHOD,
        k: int = DEFAULT_K,
        percentile: float = DEFAULT_PERCENTILE,
        holdout: float = 0.2,
        seed: int = 0,
    ) -> FeatureOOD:
        """Fit on training features and set the threshold on a held-out part of them.

        Parameters
        ----------
        features : (N, D) ndarray
            Penultimate-layer features of in-distribution (training) chest films.
        labels : (N,) ndarray of int, optional
            Class of each row; Mahalanobis then uses one mean per class and a shared covariance.
        method : {"mahalanobis", "knn"}
        k : int
            Neighbour whose distance is the k-NN score.
        percentile : float
            Threshold = this percentile of held-out in-distribution scores, so about
            ``100 - percentile`` % of real films are refused.
        holdout : float
            Fraction of rows kept out of fitting to set the threshold (0: no threshold; call
            ``set_threshold`` with validation features).
        """
        f = _check_features(features)
        if method not in ("mahalanobis", "knn"):
            raise OODError(f"method must be 'mahalanobis' or 'knn', got {method!r}")
        y = np.zeros(len(f), int) if labels is None else np.asarray(labels).astype(int).ravel()
        if y.shape != (len(f),):
            raise OODError(f"labels must have one entry per feature row ({len(f)}), got {y.shape}")
        order = np.random.default_rng(seed).permutation(len(f))
        n_hold = int(round(holdout * len(f)))
        fit_idx, hold_idx = order[n_hold:], order[:n_hold]
        if len(fit_idx) < 2:
            raise OODError(f"need at least 2 feature rows to fit, got {len(fit_idx)}")
        fit_f, fit_y = f[fit_idx], y[fit_idx]
        empty = np.zeros((0, f.shape[1]))
        if method == "knn":
            if not 1 <= k <= len(fit_f):
                raise OODError(f"k must be between 1 and {len(fit_f)} fitting rows, got {k}")
            det = cls("knn", empty, np.zeros((0, 0)), _unit(fit_f), k=k)
        else:
            from sklearn.covariance import LedoitWolf

            classes = np.unique(fit_y)
            means = np.stack([fit_f[fit_y == c].mean(axis=0) for c in classes])
            centred = fit_f - means[np.searchsorted(classes, fit_y)]
            precision = LedoitWolf(assume_centered=True).fit(centred).precision_
            det = cls("mahalanobis", means, precision, np.zeros((0, f.shape[1])))
        if n_hold:
            det.set_threshold(f[hold_idx], percentile)
        return det

    @property
    def dim(self) -> int:
        return self.means.shape[1] if self.method == "mahalanobis" else self.bank.shape[1]

    def score(self, features: np.ndarray, *, batch: int = 1024) -> np.ndarray:
        """OOD score per row: Mahalanobis distance to the nearest class mean, or k-th NN distance."""
        f = _check_features(features, self.dim)
        out = np.empty(len(f))
        for s in range(0, len(f), batch):
            chunk = f[s : s + batch]
            if self.method == "knn":
                sq = np.maximum(2.0 - 2.0 * _unit(chunk) @ self.bank.T, 0.0)
                out[s : s + batch] = np.sqrt(np.partition(sq, self.k - 1, axis=1)[:, self.k - 1])
            else:
                d2 = [np.sum(((chunk - m) @ self.precision) * (chunk - m), axis=1) for m in self.means]
                out[s : s + batch] = np.sqrt(np.maximum(np.min(d2, axis=0), 0.0))
        return out

    def set_threshold(self, in_features: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> float:
        """Set the threshold to a percentile of scores of held-out in-distribution features."""
        if not 0 < percentile <= 100:
            raise OODError(f"percentile must be in (0, 100], got {percentile}")
        self.threshold = float(np.percentile(self.score(in_features), percentile))
        self.percentile = float(percentile)
        return self.threshold

    def finding(self, score: float) -> Finding | None:
        """The detector's finding for one score, or None when it is within the threshold."""
        if not score > self.threshold:
            return None
        return Finding("detector", DETECTOR_REASON,
                       f"distance to the nearest training films {score:.3f}, threshold {self.threshold:.3f} "
                       f"({self.method}{f' k={self.k}' if self.method == 'knn' else ''})")

    def decide(self, features: np.ndarray, reasons: list[str] | None = None,
               findings: Sequence[Finding] = ()) -> list[OODDecision]:
        """One decision per row: ``findings`` (or bare ``reasons``) plus the detector's finding when over threshold."""
        base = list(findings) + [Finding("image", r, "") for r in reasons or []]
        out = []
        for s in self.score(features):
            extra = self.finding(float(s))
            out.append(OODDecision.of(base + ([extra] if extra else []), float(s), self.threshold))
        return out

    def summary(self) -> dict:
        """Small JSON-ready description for a model card."""
        n = len(self.bank) if self.method == "knn" else None
        return {"method": self.method, "k": self.k if self.method == "knn" else None,
                "dim": self.dim, "n_bank": n, "threshold": self.threshold,
                "percentile": self.percentile}

    def save(self, path: str | Path) -> None:
        """Write to an ``.npz`` file (no pickle)."""
        np.savez(path, method=np.array(self.method), means=self.means, precision=self.precision,
                 bank=self.bank, k=np.array(self.k), threshold=np.array(self.threshold),
                 percentile=np.array(self.percentile))

    @classmethod
    def load(cls, path: str | Path) -> FeatureOOD:
        """Read a file written by ``save``."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(str(z["method"]), z["means"], z["precision"], z["bank"],
                           int(z["k"]), float(z["threshold"]), float(z["percentile"]))
        except (OSError, KeyError, ValueError) as exc:
            raise OODError(f"cannot read an OOD detector from {path}: {exc}") from exc


def evaluate_detector(
    in_scores: np.ndarray, out_scores: np.ndarray, threshold: float | None = None
) -> dict:
    """AUROC and refusal rates of a score where higher means out of distribution.

    Parameters
    ----------
    in_scores, out_scores : (N,) ndarray
        Scores of in-distribution (real chest films) and out-of-distribution inputs.
    threshold : float, optional
        Refuse above it; default: 99th percentile of ``in_scores``.

    Returns
    -------
    dict
        ``auroc``, ``threshold``, ``false_refusal_rate`` (in-distribution refused) and
        ``true_refusal_rate`` (out-of-distribution refused).
    """
    from sklearn.metrics import roc_auc_score

    a = np.asarray(in_scores, dtype=np.float64).ravel()
    b = np.asarray(out_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise OODError(f"need in- and out-of-distribution scores, got {a.size} and {b.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise OODError("scores contain NaN or infinite values")
    t = float(np.percentile(a, 99)) if threshold is None else float(threshold)
    auroc = roc_auc_score(np.r_[np.zeros(a.size), np.ones(b.size)], np.r_[a, b])
    return {"auroc": float(auroc), "threshold": t,
            "false_refusal_rate_at_threshold": float(np.mean(a > t)),
            "true_refusal_rate": float(np.mean(b > t))}
