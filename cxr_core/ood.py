"""Refusing inputs that do not look like a frontal chest radiograph.

Two kinds of evidence, both on plain arrays:

- ``image_checks``: cheap pixel and DICOM-header checks (colour, shape, blank, noise, histogram,
  the chest's left-right intensity layout, modality and body part). Each failed check is a
  sentence a user can read. Limits were set from measurements on 520 real chest films
  (``bench/ood_sets.py``) with a wide margin beyond the worst real film, so that they refuse
  only what is plainly not a chest film.
- ``FeatureOOD``: distance of a model's penultimate features to the training set
  (class-conditional Mahalanobis with a shared Ledoit-Wolf covariance [1]_, or k-th nearest
  neighbour on L2-normalised features [2]_), thresholded at a high percentile of held-out
  in-distribution scores so that few real films are refused.

References
----------
.. [1] Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
   Adversarial Attacks", NeurIPS 2018.
.. [2] Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_core.errors import CXRError

ACCEPTED_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
CHEST_BODY_PARTS = ("CHEST", "THORAX", "TORAX", "LUNG")
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL"})
_WORK_SIDE = 256  # images are block-averaged to at most this side before measuring
_BINS = 32


class OODError(CXRError):
    """Input to an out-of-distribution check or detector has the wrong shape or content."""


@dataclass(frozen=True)
class CheckLimits:
    """Limits of ``image_checks``; the comments give the range measured on 520 real films.

    Colourfulness is Hasler-Suesstrunk on RGB in [0, 1] (15/255 is "slightly colourful").
    """

    max_colorfulness: float = 0.06  # grayscale films: 0
    max_aspect: float = 1.6  # real: 1.00 .. 1.35
    min_std: float = 0.02  # real: 0.053 .. 0.31
    max_high_freq: float = 0.15  # real: 0.003 .. 0.059; white noise: 1.0
    max_dominant_grey: float = 0.45  # real: 0.05 .. 0.34 of pixels in one of 32 grey bins
    min_grey_entropy: float = 0.35  # real: 0.48 .. 0.98 (normalised, 32 bins)
    min_layout: float = -0.35  # real: -0.05 .. 1.69; rotated or inverted films: mostly < -0.5


@dataclass(frozen=True)
class ImageFeatures:
    """Numbers the pixel checks look at, computed on a copy shrunk to at most 256 px a side."""

    aspect: float
    std: float
    high_freq: float
    dominant_grey: float
    grey_entropy: float
    layout: float


@dataclass
class OODDecision:
    """Whether an input may be scored, and why not when it may not."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    score: float | None = None
    threshold: float | None = None


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler-Suesstrunk colourfulness of an (H, W, 3) RGB image with values in [0, 1].

    0 for any gray image (equal channels), about 0.3 for a colour photograph.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise OODError(f"colorfulness needs an (H, W, 3) RGB array, got shape {rgb.shape}")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    x = np.asarray(pixels, dtype=np.float64)
    if x.ndim != 2 or min(x.shape) < 2:
        raise OODError(f"pixels must be a 2-D (H, W) grayscale array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise OODError("pixels contain NaN or infinite values")
    return x


def _shrink(x: np.ndarray, side: int = _WORK_SIDE) -> np.ndarray:
    """Block-average so the longer side is at most ``side`` (keeps noise white, unlike zooming)."""
    f = int(np.ceil(max(x.shape) / side))
    if f <= 1:
        return x
    h, w = (x.shape[0] // f) * f, (x.shape[1] // f) * f
    if h == 0 or w == 0:
        return x
    return x[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _trim_borders(x: np.ndarray, frac: float = 0.15) -> np.ndarray:
    """Drop outer rows and columns that are nearly uniform (collimation, padding, letterbox)."""
    s = x.std()
    rows = np.flatnonzero(x.std(axis=1) > frac * s)
    cols = np.flatnonzero(x.std(axis=0) > frac * s)
    if rows.size < 8 or cols.size < 8:
        return x
    return x[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _central_band(x: np.ndarray) -> float:
    """Central 10 % of columns minus the two lung-field bands, in units of the image's std."""
    col = x.mean(axis=0)
    n = col.size
    centre = col[int(0.45 * n) : max(int(0.55 * n), int(0.45 * n) + 1)].mean()
    lungs = np.r_[col[int(0.2 * n) : int(0.35 * n) + 1], col[int(0.65 * n) : int(0.8 * n) + 1]].mean()
    return float((centre - lungs) / (x.std() + 1e-12))


def image_features(pixels: np.ndarray) -> ImageFeatures:
    """Measure what the pixel checks use.

    ``layout`` is why a chest film is recognisable without a model: on a frontal film (bone
    bright) the spine and mediastinum form a bright vertical band between two darker lungs.
    It is that band's contrast across columns minus the same contrast across rows, so a film
    rotated by 90 degrees or inverted scores negative.

    Parameters
    ----------
    pixels : (H, W) ndarray
        Grayscale image, float in [0, 1].
    """
    x = _check_pixels(pixels)
    aspect = max(x.shape) / min(x.shape)
    x = _shrink(x)
    std = float(x.std())
    if std == 0.0:
        return ImageFeatures(aspect, 0.0, 0.0, 1.0, 0.0, 0.0)
    dx, dy = np.diff(x, axis=1), np.diff(x, axis=0)
    high_freq = float((np.mean(dx**2) + np.mean(dy**2)) / (4 * std**2))  # = 1 - lag-1 autocorr
    t = _trim_borders(x)
    hist = np.histogram(np.clip(t, 0, 1), bins=_BINS, range=(0.0, 1.0))[0] / t.size
    nz = hist[hist > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(_BINS))
    layout = _central_band(t) - _central_band(t.T)
    return ImageFeatures(aspect, std, high_freq, float(hist.max()), entropy, layout)


def _meta(metadata: dict, *names: str) -> str:
    for key, value in metadata.items():
        if key.replace("_", "").lower() in names and value not in (None, ""):
            return str(value).strip().upper()
    return ""


def metadata_checks(metadata: dict | None) -> list[str]:
    """Reasons from DICOM header fields (any key spelling: ``Modality`` or ``modality``)."""
    if not metadata:
        return []
    reasons = []
    modality = _meta(metadata, "modality")
    if modality and modality not in ACCEPTED_MODALITIES:
        reasons.append(
            f"DICOM modality is {modality}, not a radiograph "
            f"({'/'.join(sorted(ACCEPTED_MODALITIES))})"
        )
    part = _meta(metadata, "bodypartexamined", "bodypart")
    if part and not any(p in part for p in CHEST_BODY_PARTS):
        reasons.append(f"DICOM body part is {part}, not CHEST")
    view = _meta(metadata, "viewposition", "view")
    if view in LATERAL_VIEWS:
        reasons.append(f"DICOM view position is {view}, a lateral view, not frontal (PA/AP)")
    return reasons


def image_checks(
    pixels: np.ndarray,
    *,
    was_color: bool = False,
    colorfulness: float | None = None,
    metadata: dict | None = None,
    limits: CheckLimits = CheckLimits(),
) -> list[str]:
    """Reasons why an image does not look like a frontal chest radiograph; empty if none.

    Parameters
    ----------
    pixels : (H, W) ndarray
        Grayscale image, float in [0, 1], bone bright (as ``imaging.load_xray`` returns it).
    was_color : bool
        The file had colour channels. Alone this refuses nothing (many films are stored as
        RGB with equal channels); ``colorfulness`` decides.
    colorfulness : float or None
        ``colorfulness(rgb)`` of the original RGB pixels, when there were any.
    metadata : dict or None
        DICOM fields such as Modality, BodyPartExamined, ViewPosition.

    Returns
    -------
    reasons : list of str
        One sentence per failed check, with the measured value and the limit.

    Examples
    --------
    >>> image_checks(np.zeros((300, 300), np.float32))
    ['nearly constant (blank) image: contrast 0.000 < 0.02']
    """
    reasons = []
    if was_color and colorfulness is not None and colorfulness > limits.max_colorfulness:
        reasons.append(
            f"strong colour (colourfulness {colorfulness:.2f} > {limits.max_colorfulness}): "
            "a photograph or figure, not a radiograph"
        )
    f = image_features(pixels)
    if f.aspect > limits.max_aspect:
        reasons.append(f"extreme aspect ratio {f.aspect:.2f} (chest films: at most {limits.max_aspect})")
    if f.std < limits.min_std:
        reasons.append(f"nearly constant (blank) image: contrast {f.std:.3f} < {limits.min_std}")
        return reasons + metadata_checks(metadata)
    if f.high_freq > limits.max_high_freq:
        reasons.append(
            f"noise-like texture: high-frequency energy {f.high_freq:.2f} > {limits.max_high_freq}"
        )
    if f.dominant_grey > limits.max_dominant_grey:
        reasons.append(
            f"{f.dominant_grey:.0%} of the image is one grey level (a large empty background), "
            f"chest films have at most {limits.max_dominant_grey:.0%}"
        )
    if f.grey_entropy < limits.min_grey_entropy:
        reasons.append(
            f"too few grey levels (histogram entropy {f.grey_entropy:.2f} < "
            f"{limits.min_grey_entropy}): line art or a binary image"
        )
    if f.layout < limits.min_layout:
        reasons.append(
            f"no bright central band between darker lungs (layout {f.layout:.2f} < "
            f"{limits.min_layout}): rotated, inverted or not a frontal chest film"
        )
    return reasons + metadata_checks(metadata)


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
        method: str = "mahalanobis",
        k: int = 10,
        percentile: float = 99.5,
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

    def set_threshold(self, in_features: np.ndarray, percentile: float = 99.5) -> float:
        """Set the threshold to a percentile of scores of held-out in-distribution features."""
        if not 0 < percentile <= 100:
            raise OODError(f"percentile must be in (0, 100], got {percentile}")
        self.threshold = float(np.percentile(self.score(in_features), percentile))
        self.percentile = float(percentile)
        return self.threshold

    def decide(self, features: np.ndarray, reasons: list[str] | None = None) -> list[OODDecision]:
        """One decision per row, adding a reason when the score exceeds the threshold."""
        decisions = []
        for s in self.score(features):
            why = list(reasons or [])
            if s > self.threshold:
                why.append(
                    f"model features unlike the training chest films "
                    f"(OOD score {s:.3g} > threshold {self.threshold:.3g})"
                )
            decisions.append(OODDecision(not why, why, float(s), self.threshold))
        return decisions

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


def image_decision(reasons: list[str]) -> OODDecision:
    """Decision from image checks alone (used when no feature detector is available)."""
    return OODDecision(not reasons, list(reasons))


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
