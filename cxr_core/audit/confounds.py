"""Confounds: does the model know the hospital (or the age group) of a film, and does that stand in for the class?

A shortcut such as "adult film, so COVID-19" is not a place on the film, so no heatmap share finds it.
It leaves a signature in three numbers per extra manifest column (``source``, ``age_group``...):

1. **Feature AUROC** (the shortcut probe): a logistic regression (scikit-learn, standardised features)
   on the model's penultimate features predicts the column, cross-validated with patient-grouped
   folds (:class:`~sklearn.model_selection.StratifiedGroupKFold`, so a patient's films never sit on
   both sides of a fold); the out-of-fold probabilities give the AUROC (macro one-vs-rest for more
   than two values). High means the features encode the column.
2. **Label association**: Cramér's V between the column and the true class
   (:func:`scipy.stats.contingency.association`). High means the column could stand in for the class.
3. **Accuracy gap**: within some class, accuracy differs between the column's values
   (:mod:`cxr_core.audit.subgroups`).

A column is **flagged** when all three hold (:data:`PROBE_AUROC`, :data:`ASSOCIATION`,
:data:`ACCURACY_GAP`): the "class ~ source" signature. Each flag carries sentences of evidence with the
group sizes, since small groups make the gap an anecdote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from cxr_core.errors import CXRError, DataError

#: The probe's AUROC from which the features are said to encode a column.
PROBE_AUROC = 0.8
#: Cramér's V from which a column is said to be associated with the label.
ASSOCIATION = 0.5
#: The difference in within-class accuracy between two values of a column that counts as a gap.
ACCURACY_GAP = 0.2
#: Subgroups with fewer films than this are called anecdotes in the evidence.
SMALL_GROUP = 5
#: Folds of the probe's cross-validation (fewer when a value has fewer patients).
FOLDS = 5
#: Values of a column with fewer patients than this are left out of the probe (a fold needs them).
MIN_PATIENTS = 2


@dataclass
class Confound:
    """What the audit found about one column (``asdict`` is the JSON entry)."""

    column: str
    feature_auroc: float | None
    label_association: float | None
    flagged: bool
    evidence: list = field(default_factory=list)
    accuracy_gap: float | None = None
    probe: dict = field(default_factory=dict)  # folds, values used, values left out


def cramers_v(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cramér's V between two categorical sequences (None when either has a single value).

    Examples
    --------
    >>> cramers_v(["x", "x", "y", "y"], ["1", "1", "2", "2"])
    1.0
    """
    from scipy.stats.contingency import association, crosstab

    if len(a) != len(b):
        raise DataError(f"Cramér's V needs paired values; got {len(a)} and {len(b)}")
    table = crosstab(np.asarray(a), np.asarray(b)).count
    if min(table.shape) < 2:
        return None
    return float(association(table, method="cramer"))


def probe_auroc(features: np.ndarray, values: Sequence[str], groups: Sequence[str], *, folds: int = FOLDS,
                seed: int = 0) -> tuple[float | None, dict]:
    """Patient-grouped cross-validated AUROC of a logistic regression predicting ``values`` from ``features``.

    Values held by fewer than :data:`MIN_PATIENTS` patients are left out. Returns the AUROC (None
    when fewer than two values remain) and ``{"folds", "values", "left_out", "n"}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, np.float64)
    v = np.asarray([str(s) for s in values])
    g = np.asarray([str(s) for s in groups])
    if not (len(x) == len(v) == len(g)):
        raise DataError(f"the probe needs one value and one patient per film: {len(x)} films, {len(v)} values, "
                        f"{len(g)} patients")
    patients = {str(val): len(set(g[v == val])) for val in sorted(set(v))}
    kept = [str(val) for val, n in patients.items() if n >= MIN_PATIENTS]
    info = {"left_out": sorted(set(patients) - set(kept)), "values": kept}
    if len(kept) < 2:
        return None, {**info, "folds": 0, "n": 0}
    use = np.isin(v, kept)
    x, v, g = x[use], v[use], g[use]
    k = int(min(folds, min(patients[val] for val in kept)))
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    probs = cross_val_predict(model, x, v, groups=g, cv=cv, method="predict_proba")
    labels = sorted(kept)
    auc = (roc_auc_score(v == labels[1], probs[:, 1]) if len(labels) == 2
           else roc_auc_score(v, probs, multi_class="ovr", average="macro", labels=labels))
    return float(auc), {**info, "folds": k, "n": int(use.sum())}


def _gap(column: str, per_value: Mapping[str, dict], classes: Sequence[str]) -> tuple[float | None, str]:
    """A within-class accuracy difference between two values of ``column``, and a sentence stating it with sizes.

    Of the pairs that differ by :data:`ACCURACY_GAP` or more, the one with the largest groups (the
    most credible); when none does, the largest difference. Groups under :data:`SMALL_GROUP` films are named
    anecdotes in the sentence.
    """
    pairs = []
    for cls in classes:
        acc = {val: m[cls] for val, m in per_value.items() if cls in m and m[cls]["accuracy"] is not None}
        for a in acc:
            for b in acc:
                gap = acc[a]["accuracy"] - acc[b]["accuracy"]
                if gap > 0 or (gap == 0 and a < b):
                    pairs.append((gap, min(acc[a]["n"], acc[b]["n"]), cls, a, b, acc[a], acc[b]))
    if not pairs:
        return None, ""
    big = [p for p in pairs if p[0] >= ACCURACY_GAP]
    gap, smaller, cls, hi, lo, mhi, mlo = (max(big, key=lambda p: (p[1], p[5]["n"] + p[6]["n"], p[0])) if big
                                           else max(pairs, key=lambda p: (p[0], p[1])))
    line = (f"within {cls}, accuracy is {mhi['accuracy']:.0%} for {column} = {hi} ({mhi['correct']}/{mhi['n']}) "
            f"but {mlo['accuracy']:.0%} for {lo} ({mlo['correct']}/{mlo['n']})")
    if smaller < SMALL_GROUP:
        line += f" (a group under {SMALL_GROUP} films: an anecdote, not an estimate)"
    return gap, line


def find_confounds(
    features: np.ndarray,
    labels: Sequence[str],
    columns: Mapping[str, Sequence[str]],
    subgroups: Mapping[str, dict],
    classes: Sequence[str],
    *,
    patients: Sequence[str] | None = None,
    seed: int = 0,
) -> list[Confound]:
    """A :class:`Confound` per column, flagged ones first (then by feature AUROC).

    Parameters
    ----------
    features : (N, D) penultimate features of the films.
    labels : N true class names.
    columns : {column: N values}; films with an empty value are left out of that column.
    subgroups : :func:`cxr_core.audit.subgroups.subgroup_metrics` of the same films.
    patients : N patient ids (each film its own patient when not given).
    """
    x = np.asarray(features, np.float64)
    y = np.asarray([str(s) for s in labels])
    ids = np.asarray([str(s) for s in patients]) if patients is not None else np.arange(len(y)).astype(str)
    if x.ndim != 2 or len(x) != len(y) or len(ids) != len(y):
        raise DataError(f"features {x.shape}, {len(y)} labels and {len(ids)} patient ids must describe the same films")
    out = []
    for column, raw in columns.items():
        values = np.asarray([str(v or "").strip() for v in raw])
        known = values != ""
        auroc, probe = probe_auroc(x[known], values[known], ids[known], seed=seed)
        assoc = cramers_v(values[known], y[known])
        gap, gap_line = _gap(column, subgroups.get(column, {}), classes)
        flagged = (auroc is not None and auroc >= PROBE_AUROC and assoc is not None and assoc >= ASSOCIATION
                   and gap is not None and gap >= ACCURACY_GAP)
        evidence = []
        if auroc is not None:
            evidence.append(f"the model's features predict {column} with AUROC {auroc:.2f} (logistic regression, "
                            f"{probe['folds']}-fold cross-validation grouped by patient, {probe['n']} films)")
        else:
            evidence.append(f"the probe could not run: fewer than two values of {column} with {MIN_PATIENTS}+ patients")
        if probe["left_out"]:
            evidence.append(f"left out of the probe (fewer than {MIN_PATIENTS} patients): "
                            + ", ".join(probe["left_out"]))
        if assoc is not None:
            evidence.append(f"{column} is associated with the label: Cramér's V {assoc:.2f}")
        if gap_line:
            evidence.append(gap_line)
        out.append(Confound(column, None if auroc is None else round(auroc, 4),
                            None if assoc is None else round(assoc, 4), bool(flagged), evidence,
                            None if gap is None else round(gap, 4), probe))
    return sorted(out, key=lambda c: (not c.flagged, -(c.feature_auroc or 0)))


def penultimate_model(model):
    """A Keras model giving ``(penultimate features, probabilities)``: the input of the output layer, flattened.

    Raises
    ------
    CXRError
        The output layer's input is not reachable on the model's own graph (a nested model this does not unpick).
    """
    import keras

    from cxr_core.models.model_outputs import output_layer

    final, node = output_layer(model)
    try:
        penultimate = final._inbound_nodes[node].input_tensors[0]
        return keras.Model(model.inputs, [penultimate, model.outputs[0]])
    except (AttributeError, IndexError, ValueError) as exc:
        raise CXRError(f"the penultimate features of this model cannot be read ({exc})") from exc


def features_and_scores(loaded, pixels: Sequence[np.ndarray], *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, D) and raw softmax outputs (N, K) for [0, 1] grayscale films (the model's
    preprocessing, :func:`cxr_core.models.preprocess.prepare_batch`)."""
    from cxr_core.models.preprocess import prepare_batch

    fn = penultimate_model(loaded.model)
    feats, probs = [], []
    for start in range(0, len(pixels), batch_size):
        batch = prepare_batch(list(pixels[start:start + batch_size]), loaded.spec)
        f, p = fn([batch], training=False)
        feats.append(np.asarray(f, np.float64).reshape(len(batch), -1))
        probs.append(np.asarray(p, np.float64))
    if not feats:
        raise DataError("no films to read features from")
    return np.concatenate(feats), np.concatenate(probs)


def analyse(
    loaded,
    films: Sequence[dict],
    *,
    wanted: Sequence[str] | None = None,
    mask_markers: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict, list[dict], list[str]]:
    """Subgroups and confounds of labelled films: ``(subgroups, confounds as dicts, files used)``.

    ``films`` are ``{"file", "label", "patient_id", "columns": {column: value}}``; unlabelled films and
    labels the model does not have are skipped. Returns empty results when no column makes subgroups.
    """
    from cxr_core.audit.subgroups import subgroup_columns, subgroup_metrics
    from cxr_core.io.imaging import load_xray

    classes = list(loaded.card.classes)
    films = [f for f in films if f.get("label") in classes]
    cols = subgroup_columns([f.get("columns") or {} for f in films], wanted=wanted) if films else []
    if not cols:
        return {}, [], []
    pixels = []
    for f in films:
        px = load_xray(f["file"]).pixels
        if mask_markers:
            from cxr_core.safety.markers import mask_markers as clean

            px = clean(px)
        pixels.append(px)
    feats, probs = features_and_scores(loaded, pixels)
    y = np.array([classes.index(f["label"]) for f in films])
    patients = [f.get("patient_id") or str(f["file"]) for f in films]
    columns = {c: [str((f.get("columns") or {}).get(c, "") or "") for f in films] for c in cols}
    subgroups = subgroup_metrics(y, probs, classes, columns, patients=patients, n_boot=n_boot, seed=seed)
    found = find_confounds(feats, [f["label"] for f in films], columns, subgroups, classes, patients=patients,
                           seed=seed)
    return subgroups, [asdict(c) for c in found], [str(f["file"]) for f in films]


def add_to_report(report, loaded, items: Sequence, *, wanted: Sequence[str] | None = None, n_boot: int = 1000,
                  seed: int = 0) -> None:
    """Fill ``report.subgroups``, ``report.confounds`` and ``report.confound_films`` from the audited films.

    Only films the audit analysed (not refused, not unreadable) count; ``items`` are the
    :class:`~cxr_core.audit.AuditItem` s the audit ran on (their ``columns`` are the manifest's extra columns).
    """
    columns_of = {str(item.file): dict(getattr(item, "columns", {}) or {}) for item in items}
    films = [{"file": im.file, "label": im.label, "patient_id": im.patient_id, "columns": columns_of.get(im.file, {}),
              "sha256": im.sha256} for im in report.images]
    if not any(f["columns"] for f in films):
        return
    subgroups, confounds, used = analyse(loaded, films, wanted=wanted,
                                         mask_markers=bool(report.settings.get("mask_markers")), n_boot=n_boot,
                                         seed=seed)
    sha = {f["file"]: f["sha256"] for f in films}
    report.subgroups, report.confounds = subgroups, confounds
    report.confound_films = [sha[f] for f in used]
    report.settings = {**report.settings, "confound_rule": {
        "feature_auroc": PROBE_AUROC, "label_association": ASSOCIATION, "accuracy_gap": ACCURACY_GAP}}


__all__ = [
    "add_to_report", "ACCURACY_GAP", "ASSOCIATION", "FOLDS", "MIN_PATIENTS", "PROBE_AUROC", "SMALL_GROUP", "Confound",
    "analyse", "cramers_v",
    "features_and_scores", "find_confounds", "penultimate_model", "probe_auroc",
]
