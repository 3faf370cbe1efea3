"""Test-set metrics with scikit-learn, each with a seeded 95% bootstrap interval.

:func:`classification_metrics` gives the point estimates (accuracy, loss, macro and per-class
precision/recall/F1, one-vs-rest AUC, confusion matrix, ROC points); :func:`bootstrap_intervals`
resamples images with replacement and reports percentile intervals (the resamples are scored by
:func:`replicate_scalars`, a vectorised equivalent checked against scikit-learn); :func:`evaluate_probabilities`
puts both together in the JSON shape stored in ``card.metrics``; :func:`table2_row` prints it as
a row of the study's Table 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxr_core.errors import DataError
from cxr_core.stats import CONVENTION, bootstrap, percentile_interval

#: Scalar metrics that get a bootstrap interval, in Table 2 order.
SCALARS = ("accuracy", "loss", "auc", "f1", "recall", "precision")


def _check(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise DataError(f"probabilities have shape {probs.shape}; expected (N, {len(classes)}) for classes {list(classes)}")
    if len(y_true) != len(probs) or len(y_true) == 0:
        raise DataError(f"got {len(y_true)} labels for {len(probs)} predictions; need the same non-zero number")
    if y_true.min() < 0 or y_true.max() >= len(classes):
        raise DataError(f"labels must be class indices 0..{len(classes) - 1}, got {y_true.min()}..{y_true.max()}")
    return y_true, probs


def _scalars(y_true: np.ndarray, probs: np.ndarray, k: int) -> dict[str, float]:
    """Scalar metrics (macro averages) plus per-class ones, keyed ``"<metric>"`` and ``"<metric>/<i>"``."""
    from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support, roc_auc_score

    labels = np.arange(k)
    y_pred = probs.argmax(axis=1)
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "loss": float(log_loss(y_true, np.clip(probs, 1e-15, 1.0), labels=labels)),
    }
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    present = np.bincount(y_true, minlength=k) > 0
    aucs = np.full(k, np.nan)
    onehot = np.eye(k)[y_true]
    for i in range(k):
        if 0 < onehot[:, i].sum() < len(y_true):
            aucs[i] = roc_auc_score(onehot[:, i], probs[:, i])
    for name, values in (("precision", p), ("recall", r), ("f1", f), ("auc", aucs)):
        for i in range(k):
            out[f"{name}/{i}"] = float(values[i])
    # Macro averages over the classes present in y_true (sklearn's macro over the labels seen).
    out["precision"] = float(np.mean(p[present]))
    out["recall"] = float(np.mean(r[present]))
    out["f1"] = float(np.mean(f[present]))
    out["auc"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    return out


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Point estimates, computed with scikit-learn.

    Parameters
    ----------
    y_true : (N,) int array
        True class indices into ``classes``.
    probs : (N, K) float array
        Predicted probabilities.
    classes : K class names.

    Returns
    -------
    dict
        ``accuracy``, ``loss`` (cross-entropy), macro ``precision``/``recall``/``f1`` and one-vs-rest
        ``auc`` (over the classes present), ``per_class`` {class: {precision, recall, f1, auc, support}},
        ``confusion_matrix`` (rows true, columns predicted) and ``roc`` {class: {fpr, tpr}}.
    """
    from sklearn.metrics import confusion_matrix, roc_curve

    y_true, probs = _check(y_true, probs, classes)
    k = len(classes)
    s = _scalars(y_true, probs, k)
    support = np.bincount(y_true, minlength=k)
    roc = {}
    for i, cls in enumerate(classes):
        if 0 < support[i] < len(y_true):
            fpr, tpr, _ = roc_curve(y_true == i, probs[:, i])
            roc[cls] = {"fpr": [round(float(v), 4) for v in fpr], "tpr": [round(float(v), 4) for v in tpr]}
    return {
        **{m: s[m] for m in SCALARS},
        "per_class": {
            cls: {**{m: s[f"{m}/{i}"] for m in ("precision", "recall", "f1", "auc")}, "support": int(support[i])}
            for i, cls in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, probs.argmax(axis=1), labels=np.arange(k)).tolist(),
        "roc": roc,
        "n": int(len(y_true)),
    }


def replicate_scalars(y_true: np.ndarray, probs: np.ndarray, k: int, counts: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of :func:`_scalars` for many resamples at once.

    ``counts`` is (B, N): how often each image appears in each resample. Vectorised so that 1000
    resamples cost about as much as one scikit-learn call; ``tests/test_evaluate.py`` checks it
    against scikit-learn on explicit resamples.
    """
    w = np.asarray(counts, dtype=np.float64)
    n_b = w.sum(axis=1)
    y_pred = probs.argmax(axis=1)
    out: dict[str, np.ndarray] = {"accuracy": w @ (y_pred == y_true) / n_b}
    nll = -np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-15, 1.0))
    out["loss"] = w @ nll / n_b
    cells = np.eye(k * k)[y_true * k + y_pred]  # (N, k*k) one-hot of (true, predicted)
    cm = (w @ cells).reshape(-1, k, k)
    tp = np.einsum("bii->bi", cm)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    aucs = np.full((len(w), k), np.nan)
    for c in range(k):
        _, tie_group = np.unique(probs[:, c], return_inverse=True)
        groups = np.eye(tie_group.max() + 1)[tie_group]  # (N, U) one-hot of the sorted distinct scores
        pos = (w * (y_true == c)) @ groups
        neg = (w * (y_true != c)) @ groups
        below = np.cumsum(neg, axis=1) - neg
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            aucs[:, c] = np.where((n_pos > 0) & (n_neg > 0),
                                  (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg), np.nan)
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1), ("auc", aucs)):
        for c in range(k):
            out[f"{name}/{c}"] = values[:, c]
    with np.errstate(invalid="ignore"):
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            out[name] = np.where(present, values, 0).sum(axis=1) / present.sum(axis=1)
        defined = np.isfinite(aucs)
        out["auc"] = np.where(defined.any(axis=1), np.nansum(aucs, axis=1) / np.maximum(defined.sum(axis=1), 1), np.nan)
    return out


def bootstrap_intervals(
    y_true: Sequence[int],
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals over images for every scalar and per-class metric.

    Images are resampled with replacement by :func:`cxr_core.stats.bootstrap` (``seed``-ed); a
    resample where a metric is undefined (e.g. the AUC of a class absent from it) is skipped for
    that metric, and the bounds follow :data:`cxr_core.stats.CONVENTION`.

    Returns
    -------
    dict
        ``{metric: [low, high]}`` for :data:`SCALARS`, and ``per_class`` {class: {metric: [low, high]}}.
    """
    y_true, probs = _check(y_true, probs, classes)
    k = len(classes)
    samples = bootstrap(lambda counts: replicate_scalars(y_true, probs, k, counts), len(y_true),
                        n_boot=n_boot, seed=seed)

    def interval(key: str) -> list[float] | None:
        lo, hi = percentile_interval(samples[key], level)
        return None if np.isnan(lo) else [lo, hi]

    out: dict = {m: interval(m) for m in SCALARS}
    out["per_class"] = {
        cls: {m: interval(f"{m}/{i}") for m in ("precision", "recall", "f1", "auc")} for i, cls in enumerate(classes)
    }
    return out


def _round(obj, digits: int = 4):
    if isinstance(obj, float):
        return round(obj, digits) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, digits) for v in obj]
    return obj


def evaluate_probabilities(
    y_true: Sequence[int],
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Point estimates and 95% bootstrap intervals, rounded to 4 decimals (``card.metrics`` shape)."""
    metrics = classification_metrics(y_true, probs, classes)
    metrics["ci95"] = bootstrap_intervals(y_true, probs, classes, n_boot=n_boot, seed=seed)
    metrics["bootstrap"] = {"resamples": n_boot, "seed": seed, "level": 0.95,
                            "method": f"{CONVENTION}; images resampled"}
    return _round(metrics)


def match_classes(data_labels: Sequence[str], model_classes: Sequence[str], mapping: dict[str, str] | None = None) -> dict[str, str]:
    """``{data label: model class}`` for every label in the data, or refuse.

    Labels are matched to the model's classes case-insensitively with aliases; ``mapping``
    (``{"covid": "COVID-19"}``) says how to map the others.

    Raises
    ------
    DataError
        A data label maps to no class of the model (the message lists both sides and how to map).
    """
    from cxr_core.errors import CXRError
    from cxr_core.models.zoo import canonical_class

    mapping = {k.strip().lower(): v for k, v in (mapping or {}).items()}
    result, unmatched = {}, []
    for label in sorted(set(data_labels)):
        target = mapping.get(label.strip().lower(), label)
        try:
            result[label] = canonical_class(target, tuple(model_classes))
        except CXRError:
            unmatched.append(label)
    if unmatched:
        raise DataError(
            f"the data has class(es) {unmatched} that the model does not predict (its classes: "
            f"{', '.join(model_classes)}); map them with --map LABEL=CLASS,... or leave those images out"
        )
    return result


def predict_records(loaded, records, *, batch_size: int = 16) -> np.ndarray:
    """Raw softmax outputs of a registry model for records, decoded as :func:`cxr_core.models.predict` does."""
    from cxr_core.io.imaging import load_xray
    from cxr_core.models.predict import predict_arrays

    out = []
    for start in range(0, len(records), 64):  # decode in chunks to bound memory
        pixels = [load_xray(r.file).pixels for r in records[start:start + 64]]
        out.append(predict_arrays(loaded.model, loaded.spec, pixels, batch_size=batch_size))
    return np.concatenate(out) if out else np.zeros((0, len(loaded.card.classes)))


def evaluate_model(loaded, records, *, n_boot: int = 1000, seed: int = 0, mapping: dict[str, str] | None = None) -> dict:
    """Metrics of a registry model on labelled records (labels checked against the model's classes)."""
    classes = list(loaded.card.classes)
    if not records:
        raise DataError("no images to evaluate")
    to_class = match_classes([r.label for r in records], classes, mapping)
    y = np.array([classes.index(to_class[r.label]) for r in records])
    probs = predict_records(loaded, records)
    return evaluate_probabilities(y, probs, classes, n_boot=n_boot, seed=seed)


def subgroups_and_confounds(loaded, records, *, mapping: dict[str, str] | None = None,
                            wanted: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"subgroups", "confounds"}`` of labelled records by their extra manifest columns
    (:func:`cxr_core.audit.confounds.analyse`: accuracy and AUC per subgroup within each class, and the
    patient-grouped shortcut probe on the model's penultimate features). Empty when no column makes subgroups."""
    from cxr_core.audit.confounds import analyse

    to_class = match_classes([r.label for r in records], list(loaded.card.classes), mapping)
    films = [{"file": str(r.file), "label": to_class[r.label], "patient_id": r.patient_id, "columns": dict(r.extra)}
             for r in records]
    subgroups, confounds, _ = analyse(loaded, films, wanted=wanted, n_boot=n_boot, seed=seed)
    return {"subgroups": subgroups, "confounds": confounds}


def _fmt(metrics: dict, key: str, pct: bool = True) -> str:
    value = metrics.get(key)
    ci = (metrics.get("ci95") or {}).get(key)
    if value is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.2f}%") if pct else (lambda v: f"{v:.4f}")
    return f"{f(value)} [{f(ci[0])}, {f(ci[1])}]" if ci else f(value)


TABLE2_HEADER = ("model", "accuracy", "loss", "AUC", "F1", "recall", "precision")


def table2_row(name: str, metrics: dict) -> str:
    """One row of the study's Table 2: accuracy, loss, AUC, F1, recall, precision (macro), with intervals."""
    cells = [name, _fmt(metrics, "accuracy"), _fmt(metrics, "loss", pct=False), _fmt(metrics, "auc"),
             _fmt(metrics, "f1"), _fmt(metrics, "recall"), _fmt(metrics, "precision")]
    return " | ".join(cells)


def table2(rows: dict[str, dict]) -> str:
    """A Markdown Table 2 for ``{model name: metrics}``."""
    lines = ["| " + " | ".join(TABLE2_HEADER) + " |", "|" + "---|" * len(TABLE2_HEADER)]
    lines += ["| " + table2_row(name, m) + " |" for name, m in rows.items()]
    return "\n".join(lines)
