"""Consensus of several readers' masks of one film: majority vote and binary STAPLE.

When two or more experts mark the same film, heatmaps can be scored against their consensus as
well as against each reader (CheXlocalize scores against a consensus of radiologists). Two
consensus masks are offered:

- :func:`majority_vote`: a pixel is in the consensus when strictly more than half of the
  readers marked it. With an even number of readers a 50/50 tie is *not* in the consensus,
  so two readers give the intersection of their masks.
- :func:`staple`: Simultaneous Truth And Performance Level Estimation (Warfield, Zou and Wells,
  IEEE TMI 2004), binary form. Expectation-maximisation estimates each reader's sensitivity
  and specificity and the probability that each pixel is truly marked; a reader who marks at
  random gets low estimates and little weight. Threshold the probability map at 0.5 for a mask.

Every reader's mask of a film has the film's size, so the masks are stacked as (R, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr_core.errors import CXRError

#: The consensus pseudo-readers' names, as reports and pages show them (see :mod:`cxr_core.agreement.session_scores`).
MAJORITY_READER = "Consensus (majority)"
STAPLE_READER = "Consensus (STAPLE, p>=0.5)"
READERS = (MAJORITY_READER, STAPLE_READER)
#: Probabilities kept this far from 0 and 1 in the E-step, so a perfect reader's log-likelihood stays finite.
_EPS = 1e-12


class ConsensusError(CXRError):
    """Masks that cannot be combined (wrong dimensions, sizes that differ, no reader)."""


def _stack(masks) -> np.ndarray:
    """(R, H, W) bool from an array or a sequence of (H, W) masks, sizes checked."""
    if isinstance(masks, np.ndarray):
        arr = masks
    else:
        shapes = {np.shape(m) for m in masks}
        if len(shapes) > 1:
            raise ConsensusError(f"readers' masks of one film must share its size; got sizes {sorted(shapes)}")
        arr = np.asarray(list(masks))
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ConsensusError(f"masks must be (readers, rows, cols) with at least one reader; got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def majority_vote(masks) -> np.ndarray:
    """Pixels marked by strictly more than half of the readers.

    Parameters
    ----------
    masks : (R, H, W) array_like of bool, or a sequence of R (H, W) masks

    Returns
    -------
    (H, W) bool ndarray
        A tie (exactly half, possible with an even R) is left out of the consensus.

    Examples
    --------
    >>> majority_vote([[[1, 1, 0]], [[1, 0, 0]], [[0, 1, 0]]]).astype(int).tolist()
    [[1, 1, 0]]
    >>> majority_vote([[[1, 1]], [[1, 0]]]).astype(int).tolist()  # two readers: their intersection
    [[1, 0]]
    """
    arr = _stack(masks)
    return 2 * arr.sum(axis=0) > arr.shape[0]


def majority_label(labels, *, tie: str) -> str:
    """The label more than half of the readers gave, or ``tie`` when none has a strict majority.

    >>> majority_label(["COVID-19", "COVID-19", "Normal"], tie="uncertain")
    'COVID-19'
    >>> majority_label(["COVID-19", "Normal"], tie="uncertain")
    'uncertain'
    """
    labels = list(labels)
    if not labels:
        raise ConsensusError("no labels to take a majority of; expected at least one reader's")
    best = max(set(labels), key=labels.count)
    return best if 2 * labels.count(best) > len(labels) else tie


@dataclass(frozen=True)
class StapleResult:
    """:func:`staple`'s estimate: the truth probability per pixel and each reader's performance."""

    probability: np.ndarray  # (H, W) float in [0, 1]
    sensitivity: np.ndarray  # (R,) float
    specificity: np.ndarray  # (R,) float
    prior: float  # prior probability that a pixel is truly marked
    iterations: int
    converged: bool

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        """Pixels whose probability is at least ``threshold``."""
        return self.probability >= threshold

    def __iter__(self):  # unpacks as (probability, sensitivity, specificity)
        return iter((self.probability, self.sensitivity, self.specificity))


def staple(masks, *, max_iter: int = 100, tol: float = 1e-6, prior: float | None = None,
           init: float = 0.99) -> StapleResult:
    """Binary STAPLE: the probability each pixel is truly marked, and each reader's sensitivity and specificity.

    Parameters
    ----------
    masks : (R, H, W) array_like of bool, or a sequence of R (H, W) masks
    max_iter : int
        Most EM iterations.
    tol : float
        Stop when no pixel's probability changes by more than ``tol``.
    prior : float in (0, 1) or None
        Prior probability that a pixel is truly marked; None: the fraction of all readers'
        pixels that are marked (Warfield et al.'s global estimate), kept inside (0, 1).
    init : float in (0, 1)
        Every reader's starting sensitivity and specificity (near 1: readers are presumed good).

    Returns
    -------
    StapleResult
        Unpacks as ``(probability, sensitivity, specificity)``. A reader's sensitivity is
        undefined (NaN) when the estimate gives no pixel any chance of being marked, and
        likewise specificity when every pixel is surely marked.

    Raises
    ------
    ConsensusError
        Masks not (R, H, W), sizes that differ, or ``prior``/``init``/``max_iter`` out of range.

    References
    ----------
    S. K. Warfield, K. H. Zou, W. M. Wells. Simultaneous truth and performance level estimation
    (STAPLE): an algorithm for the validation of image segmentation. IEEE TMI 23(7), 903-921, 2004.

    Examples
    --------
    >>> same = np.array([[[0, 1, 1, 0]]] * 3, bool)
    >>> result = staple(same)
    >>> result.mask().astype(int).tolist(), result.sensitivity.round(6).tolist()
    ([[0, 1, 1, 0]], [1.0, 1.0, 1.0])
    """
    arr = _stack(masks)
    if max_iter < 1 or not 0 < init < 1 or (prior is not None and not 0 < prior < 1):
        raise ConsensusError(f"max_iter={max_iter} (>= 1), init={init} and prior={prior} (in (0, 1)) expected")
    n_readers, shape = arr.shape[0], arr.shape[1:]
    d = arr.reshape(n_readers, -1).astype(np.float64)  # (R, N) decisions
    f = float(np.clip(d.mean(), 1e-6, 1 - 1e-6)) if prior is None else float(prior)
    p = np.full(n_readers, init)  # sensitivities
    q = np.full(n_readers, init)  # specificities
    w = np.full(d.shape[1], f)  # P(truly marked | decisions)
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        # E-step: Bayes over the two possible truths, in logs (products of R terms)
        lp, lq = np.log(np.clip(p, _EPS, 1 - _EPS)), np.log(np.clip(q, _EPS, 1 - _EPS))
        l1p, l1q = np.log(np.clip(1 - p, _EPS, 1 - _EPS)), np.log(np.clip(1 - q, _EPS, 1 - _EPS))
        log_a = np.log(f) + lp @ d + l1p @ (1 - d)  # truth marked
        log_b = np.log(1 - f) + lq @ (1 - d) + l1q @ d  # truth unmarked
        new_w = 1.0 / (1.0 + np.exp(np.clip(log_b - log_a, -700, 700)))
        # M-step: each reader's performance against the soft truth
        fg, bg = new_w.sum(), (1 - new_w).sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            p = (d @ new_w) / fg
            q = ((1 - d) @ (1 - new_w)) / bg
        p = np.clip(np.where(np.isfinite(p), p, init), 0.0, 1.0)  # NaN only when no pixel is (un)marked at all
        q = np.clip(np.where(np.isfinite(q), q, init), 0.0, 1.0)
        change = float(np.abs(new_w - w).max()) if w.size else 0.0
        w = new_w
        if change <= tol:
            converged = True
            break
    sens = p if w.sum() > 0 else np.full(n_readers, np.nan)  # p, q: the M-step on the final w
    spec = q if (1 - w).sum() > 0 else np.full(n_readers, np.nan)
    return StapleResult(w.reshape(shape), sens, spec, f, it, converged)


__all__ = ["MAJORITY_READER", "READERS", "STAPLE_READER", "ConsensusError", "StapleResult", "majority_label",
           "majority_vote", "staple"]
