"""Bootstrap intervals, plain and patient-clustered, with one percentile convention.

Every interval CXR Review reports (evaluation metrics, agreement means and kappa, audit shares and
shortcut differences, sanity checks) is made here, so that they all mean the same thing:

- a resample draws units with replacement: images, or whole clusters (the films of one patient)
  when ``clusters`` is given, so that 22 films of one patient count as one patient's evidence;
- replicates come from ``numpy.random.default_rng(seed)``: the same seed gives the same interval
  (a ``numpy.random.Generator`` may be passed instead, to draw several statistics from one stream);
- the bounds are :data:`CONVENTION`: :func:`numpy.percentile` with ``method="linear"`` of the
  finite replicate values at ``(1 - level) / 2`` and ``(1 + level) / 2``; replicates where the
  statistic is undefined (NaN) are skipped.

Statistics are written against resample *counts*: a (B, N) array saying how often each item
appears in each of B resamples, so a weighted mean or a weighted confusion matrix scores a
thousand resamples in one matrix product.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from cxr_core.errors import CXRError

#: The one percentile convention, quoted in reports and JSON next to the intervals.
CONVENTION = "percentile bootstrap: numpy.percentile (linear) of the finite replicates"
#: Resamples per report unless a caller asks otherwise.
DEFAULT_RESAMPLES = 1000
#: Cells of one (B, N) counts chunk: bounds memory to about 16 MB whatever N is.
_CHUNK_CELLS = 2_000_000

Seed = int | np.random.Generator


class BootstrapError(CXRError, ValueError):
    """Resample count, level or clusters that cannot make an interval."""


def _check(n_boot: int, level: float) -> None:
    if int(n_boot) < 1 or not 0.0 < float(level) < 1.0:
        raise BootstrapError(f"a bootstrap needs n_boot >= 1 and 0 < level < 1; got n_boot={n_boot}, level={level}")


def resample_counts(n: int, *, n_boot: int = DEFAULT_RESAMPLES, seed: Seed = 0,
                    clusters: Sequence | np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Yield (b, n) arrays of how often each of ``n`` items appears in each resample, ``n_boot`` rows in all.

    Parameters
    ----------
    n : int
        Number of items (images).
    n_boot : int
        Number of resamples.
    seed : int or numpy.random.Generator
        Seed of ``numpy.random.default_rng``; a Generator is used as it is.
    clusters : sequence of length ``n``, optional
        A label per item (a patient id). Whole clusters are drawn with replacement, as many as
        there are clusters, and every item of a drawn cluster counts once per draw. Without it
        every item is its own cluster (the plain bootstrap, from the same random stream).
    """
    _check(n_boot, 0.5)
    if n < 1:
        raise BootstrapError(f"a bootstrap needs at least one item; got {n}")
    if clusters is None:
        inverse, m = np.arange(n), n
    else:
        labels = np.asarray(clusters)
        if labels.shape != (n,):
            raise BootstrapError(f"need one cluster label per item: {n} items, labels of shape {labels.shape}")
        ids, inverse = np.unique(labels, return_inverse=True)
        m = len(ids)
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // max(n, m))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        picks = rng.integers(0, m, size=(b, m)) + (np.arange(b) * m)[:, None]
        per_cluster = np.bincount(picks.ravel(), minlength=b * m).reshape(b, m)
        yield per_cluster[:, inverse].astype(np.float64)


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray | dict[str, np.ndarray]], n: int, *,
              n_boot: int = DEFAULT_RESAMPLES, seed: Seed = 0,
              clusters: Sequence | np.ndarray | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """Replicates of ``statistic(counts)`` over :func:`resample_counts`.

    ``statistic`` maps a (b, n) counts array to b values (or to a dict of such arrays, for many
    metrics at once); the chunks are concatenated into ``n_boot`` replicates per key.
    """
    parts: list = [statistic(w) for w in resample_counts(n, n_boot=n_boot, seed=seed, clusters=clusters)]
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return np.concatenate(parts)


def percentile_interval(replicates: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` interval of the finite replicates by :data:`CONVENTION`; (NaN, NaN) when none is finite.

    Examples
    --------
    >>> percentile_interval(np.arange(101.0), 0.9)
    (5.0, 95.0)
    """
    _check(1, level)
    r = np.asarray(replicates, np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        return (float("nan"), float("nan"))
    tail = round((1.0 - level) * 50, 9)  # 0.9 -> 5.0, not 4.999999999999999
    lo, hi = np.percentile(r, [tail, 100 - tail], method="linear")
    return float(lo), float(hi)


def replicate_means(values: Sequence[float] | np.ndarray, *, n_boot: int = DEFAULT_RESAMPLES, seed: Seed = 0,
                    clusters: Sequence | np.ndarray | None = None) -> np.ndarray:
    """Means of ``n_boot`` resamples of ``values`` (all finite), clustered when ``clusters`` is given."""
    v = np.asarray(values, np.float64).ravel()
    return bootstrap(lambda w: w @ v / w.sum(axis=1), len(v), n_boot=n_boot, seed=seed, clusters=clusters)


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = DEFAULT_RESAMPLES, seed: Seed = 0,
                 level: float = 0.95, clusters: Sequence | np.ndarray | None = None) -> tuple[float, float, float]:
    """Mean of the finite values and its bootstrap interval.

    NaN values (images a rule excluded) are dropped first, with their cluster labels.

    Returns
    -------
    (mean, lo, hi) : tuple of float
        All NaN when no value is finite.

    Examples
    --------
    >>> bootstrap_ci([1.0, 1.0, np.nan])
    (1.0, 1.0, 1.0)
    """
    _check(n_boot, level)
    v = np.asarray(values, np.float64).ravel()
    keep = np.isfinite(v)
    if not keep.any():
        return (float("nan"), float("nan"), float("nan"))
    labels = None if clusters is None else np.asarray(clusters).ravel()
    if labels is not None and labels.shape != v.shape:
        raise BootstrapError(f"need one cluster label per value: {v.size} values, {labels.size} labels")
    labels = None if labels is None else labels[keep]
    reps = replicate_means(v[keep], n_boot=n_boot, seed=seed, clusters=labels)
    return (float(v[keep].mean()), *percentile_interval(reps, level))


__all__ = [
    "BootstrapError", "CONVENTION", "DEFAULT_RESAMPLES", "bootstrap", "bootstrap_ci", "percentile_interval",
    "replicate_means", "resample_counts",
]
