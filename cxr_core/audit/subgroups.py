"""Subgroups of a labelled data set: accuracy and AUC per value of each extra manifest column, within each class.

Any extra column of a CSV manifest (``source``, ``age_group``, ``sex``, ``view``, ``hospital``...) splits
the films into subgroups. Within each class, for each value of a column, we report

- ``accuracy``: the share of that class's films with that value that the model calls that class
  (the class's recall inside the subgroup), and
- ``auc``: the one-vs-rest AUROC of the class's score among all films with that value (positives:
  the class; negatives: the other classes), undefined when the subgroup lacks one side,

each with a 95 % percentile bootstrap interval (:mod:`cxr_core.stats`; patients resampled when
patient ids are known). Point estimates come from scikit-learn through
:func:`cxr_core.training.evaluate.classification_metrics`; the resamples from its vectorised twin
:func:`~cxr_core.training.evaluate.replicate_scalars`, which ``tests/test_evaluate.py`` checks against
scikit-learn. Model scores are not diagnoses, and a subgroup of a handful of films is an anecdote:
``n`` is always given.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from cxr_core.errors import DataError
from cxr_core.stats import bootstrap, percentile_interval

#: Manifest columns that describe the file or its provenance text, never a subgroup.
NOT_SUBGROUPS = frozenset({
    "file", "label", "patient_id", "split", "original_path", "annotation_files", "notes", "license", "licence",
    "url", "source_repository", "sha256", "path",
})
#: A column with more distinct values than this (or than half the films) is an identifier, not a subgroup.
MAX_VALUES = 12


def subgroup_columns(rows: Sequence[Mapping[str, str]], *, wanted: Sequence[str] | None = None) -> list[str]:
    """The columns of ``rows`` (one dict of extra manifest columns per film) that make subgroups.

    With ``wanted``, exactly those (each must exist). Otherwise every column, apart from
    :data:`NOT_SUBGROUPS`, with 2 to :data:`MAX_VALUES` distinct non-empty values (and fewer than half
    as many values as films) whose split of the films differs from every column already taken (so
    ``source`` and a ``hospital`` column naming the same films count once).

    Raises
    ------
    DataError
        A ``wanted`` column that no film has.
    """
    present: list[str] = []
    for row in rows:
        present += [k for k in row if k not in present]
    if wanted:
        missing = [c for c in wanted if c not in present]
        if missing:
            raise DataError(f"subgroup column(s) {missing} are not in the manifest; its extra columns are {present}")
        return list(wanted)
    chosen, partitions = [], []
    for col in present:
        if col.strip().lower() in NOT_SUBGROUPS:
            continue
        values = [str(row.get(col, "") or "").strip() for row in rows]
        distinct = sorted({v for v in values if v})
        if not 2 <= len(distinct) <= min(MAX_VALUES, max(2, len(rows) // 2)):
            continue
        codes = {v: i for i, v in enumerate(dict.fromkeys(values))}
        partition = tuple(codes[v] for v in values)
        if partition in partitions:
            continue
        chosen.append(col)
        partitions.append(partition)
    return chosen


def _interval(samples: np.ndarray) -> list[float] | None:
    lo, hi = percentile_interval(samples)
    return None if np.isnan(lo) else [round(lo, 4), round(hi, 4)]


def _num(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None


def subgroup_metrics(
    y_true: Sequence[int],
    probs: np.ndarray,
    classes: Sequence[str],
    columns: Mapping[str, Sequence[str]],
    *,
    patients: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """``{column: {value: {class: {n, correct, accuracy, accuracy_ci95, auc, auc_ci95}}}}``.

    Parameters
    ----------
    y_true : (N,) int array
        True class indices into ``classes``.
    probs : (N, K) float array
        The model's class probabilities.
    columns : {column: N values}
        The subgroup value of every film per column; films with an empty value are left out of that column.
    patients : N patient ids, optional
        Resample patients rather than films for the intervals.

    Returns
    -------
    dict
        Per class entries only for classes that have films with that value (``accuracy`` needs them);
        ``auc`` is None when the value's films are all of one class.
    """
    from cxr_core.training.evaluate import classification_metrics, replicate_scalars

    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if p.shape != (len(y), k):
        raise DataError(f"probabilities have shape {p.shape}; expected ({len(y)}, {k})")
    ids = None if patients is None else np.asarray(patients)
    out: dict = {}
    for column, raw in columns.items():
        values = np.asarray([str(v or "").strip() for v in raw])
        if values.shape != y.shape:
            raise DataError(f"column {column!r} has {values.size} values for {len(y)} films")
        per_value: dict = {}
        for value in sorted({v for v in values if v}):
            idx = np.flatnonzero(values == value)
            yv, pv = y[idx], p[idx]
            with warnings.catch_warnings():  # the log loss (not reported here) is picky about float32 sums
                warnings.simplefilter("ignore", UserWarning)
                point = classification_metrics(yv, pv, classes)
            onehot = np.eye(k)[yv]

            def statistic(w, yv=yv, pv=pv, onehot=onehot):
                return {**replicate_scalars(yv, pv, k, w), "support": w @ onehot}

            reps = bootstrap(statistic, len(idx), n_boot=n_boot, seed=seed,
                             clusters=None if ids is None else ids[idx])
            correct = yv == pv.argmax(axis=1)
            per_value[value] = {
                cls: {
                    "n": int((yv == i).sum()),
                    "correct": int(correct[yv == i].sum()),
                    "accuracy": _num(point["per_class"][cls]["recall"]),
                    # a resample without a film of the class has no recall (replicate_scalars says 0): skip it
                    "accuracy_ci95": _interval(reps[f"recall/{i}"][reps["support"][:, i] > 0]),
                    "auc": _num(point["per_class"][cls]["auc"]),
                    "auc_ci95": _interval(reps[f"auc/{i}"]),
                }
                for i, cls in enumerate(classes) if (yv == i).any()
            }
        out[column] = per_value
    return out


__all__ = ["MAX_VALUES", "NOT_SUBGROUPS", "subgroup_columns", "subgroup_metrics"]
