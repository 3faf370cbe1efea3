"""Heatmap-versus-expert agreement, computed the way the literature does.

Per image, between a heatmap (upsampled to the X-ray's size) and an expert's boolean mask:

- mask metrics on the binarised heatmap (:mod:`cxr_core.explain.binarize`): IoU, Dice, precision, recall;
- threshold-free metrics on the min-max normalised heatmap: pointing-game hit (CheXlocalize:
  the first argmax pixel lies in the mask), relevance mass (Σ h·m / Σ h) and relevance rank
  (share of the top-|mask| pixels inside the mask; Arras et al. 2022) and pixel ROC AUC.

Empty masks follow an explicit rule. ``"true_positive_only"`` (CheXlocalize's default): mask
metrics are NaN when either mask is empty, so such images drop out of means. ``"full"``: a
one-sided empty mask scores 0 (NaN only when both are empty). Threshold-free metrics are NaN
when the expert mask is empty (AUC also when it is full; hit and mass also for a constant map).
Aggregates: seeded bootstrap intervals (:mod:`cxr_core.stats`), groups per model × class × reader × session with
"Normal" images reported apart, reader-versus-reader IoU and expert-versus-model diagnosis kappa.

One module of about 440 lines by choice: per-image metrics, aggregates and kappa share the input
checks and the empty-mask rule, and ``cxr_core.agreement`` is the import path pages, CLI and tests use.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cxr_core.explain.binarize import HeatmapError, Threshold, binarize_normalized, check_maps, normalize, upsample
from cxr_core.errors import CXRError
from cxr_core.stats import bootstrap, bootstrap_ci, percentile_interval

RULES = ("true_positive_only", "full")
MASK_METRICS = ("iou", "dice", "precision", "recall")
MAP_METRICS = ("hit", "mass", "rank", "auc")
METRICS = MASK_METRICS + MAP_METRICS
_CHUNK_PIXELS = 1 << 21  # pixels per internal chunk: temporaries stay near cache size (2 images at 1024^2)


class AgreementInputError(CXRError):
    """Heatmaps, masks or labels that cannot be compared as given."""


class ReportError(CXRError):
    """Records or masks that cannot be written as a report (HTML, COCO, gallery pictures)."""


@dataclass(frozen=True)
class ImageScore:
    """One image × model × reader comparison, with what is needed to reproduce it.

    ``threshold`` is the binarisation as :class:`~cxr_core.explain.binarize.Threshold` writes it
    (``"otsu"``, ``"0.5"``, ``"top15%"``) and ``rule`` the empty-mask rule. Metrics are floats,
    NaN where undefined; ``pred_fraction`` and ``gt_fraction`` are the masks' shares of the image.
    """

    image_id: str
    model: str
    method: str
    target: str
    reader: str
    session: str
    threshold: str
    rule: str
    iou: float
    dice: float
    precision: float
    recall: float
    hit: float
    mass: float
    rank: float
    auc: float
    pred_fraction: float
    gt_fraction: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check_rule(rule: str) -> str:
    if rule not in RULES:
        raise AgreementInputError(f"empty-mask rule {rule!r} unknown; accepted: {', '.join(RULES)}")
    return rule


def _as_masks(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3) or min(arr.shape, default=0) == 0:
        raise AgreementInputError(f"{what} must be a non-empty (H, W) array or (N, H, W) stack; got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return arr != 0
    if np.issubdtype(arr.dtype, np.floating) and np.isin(arr, (0.0, 1.0)).all():
        return arr != 0
    raise AgreementInputError(f"{what} must be boolean, integer or 0/1 float; got dtype {arr.dtype} with other values")


def _pair(a: np.ndarray, b: np.ndarray, what: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, bool]:
    single = a.ndim == 2 and b.ndim == 2
    a3, b3 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    if a3.shape[0] != b3.shape[0]:
        raise AgreementInputError(f"{what[0]} and {what[1]} differ in count: {a3.shape[0]} vs {b3.shape[0]}")
    return a3, b3, single


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def _squeeze(result: dict[str, np.ndarray], single: bool) -> dict:
    return {k: float(v[0]) for k, v in result.items()} if single else result


def mask_metrics(pred: np.ndarray, gt: np.ndarray, *, rule: str = "true_positive_only") -> dict:
    """IoU, Dice, precision and recall of a predicted mask against the expert's.

    Parameters
    ----------
    pred, gt : (H, W) or (N, H, W) boolean ndarray
        Same shape. ``gt`` is the expert mask.
    rule : {"true_positive_only", "full"}
        Empty-mask rule (module docstring). Under ``"full"``, precision is NaN only when ``pred``
        is empty and recall only when ``gt`` is.

    Returns
    -------
    dict
        ``iou``, ``dice``, ``precision``, ``recall``, ``pred_fraction``, ``gt_fraction``: floats for
        one pair, ``(N,)`` float arrays for stacks.

    Examples
    --------
    >>> a = np.zeros((4, 4), bool); a[:2] = True; b = np.zeros((4, 4), bool); b[1:3] = True
    >>> mask_metrics(a, b)["iou"]  # 4 shared pixels of 12
    0.3333333333333333
    """
    _check_rule(rule)
    p3, g3, single = _pair(_as_masks(pred, "prediction"), _as_masks(gt, "expert mask"), ("prediction", "expert mask"))
    if p3.shape != g3.shape:
        raise AgreementInputError(f"prediction and expert mask differ in shape: {p3.shape[1:]} vs {g3.shape[1:]}")
    n_p = np.count_nonzero(p3, axis=(1, 2))
    n_g = np.count_nonzero(g3, axis=(1, 2))
    inter = np.count_nonzero(p3 & g3, axis=(1, 2))
    out = {
        "iou": _divide(inter, n_p + n_g - inter),
        "dice": _divide(2 * inter, n_p + n_g),
        "precision": _divide(inter, n_p),
        "recall": _divide(inter, n_g),
    }
    if rule == "true_positive_only":
        either_empty = (n_p == 0) | (n_g == 0)
        for key in MASK_METRICS:
            out[key][either_empty] = np.nan
    pixels = p3.shape[1] * p3.shape[2]
    out["pred_fraction"] = n_p / pixels
    out["gt_fraction"] = n_g / pixels
    return _squeeze(out, single)


def _rank_auc(values: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    """Relevance rank and pixel AUC of one flattened map against one flattened mask."""
    n, n_pos = values.size, int(np.count_nonzero(inside))
    if n_pos == 0:
        return np.nan, np.nan
    # Relevance rank: top-|GT| pixels; pixels tied at the cut count by their expected share.
    cut = np.partition(values, n - n_pos)[n - n_pos]
    above = values > cut
    tied = values == cut
    n_above = int(np.count_nonzero(above))
    share = np.count_nonzero(tied & inside) / np.count_nonzero(tied)
    rank = (np.count_nonzero(above & inside) + (n_pos - n_above) * share) / n_pos
    n_neg = n - n_pos
    if n_neg == 0:
        return rank, np.nan
    # AUC = P(h_pos > h_neg) + P(h_pos == h_neg) / 2, counted by binary search of the smaller class.
    pos, neg = values[inside], values[~inside]
    flip = n_pos > n_neg
    queries, ref = (neg, np.sort(pos)) if flip else (pos, np.sort(neg))
    uniq, counts = np.unique(queries, return_counts=True)
    below = np.searchsorted(ref, uniq, "left") + np.searchsorted(ref, uniq, "right")
    pairs = float(np.dot(counts, below)) / 2.0 / (n_pos * n_neg)
    return rank, (1.0 - pairs if flip else pairs)


def _map_metrics(raw: np.ndarray, norm: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    flat_raw = raw.reshape(raw.shape[0], -1)
    flat = norm.reshape(norm.shape[0], -1)
    inside = gt.reshape(gt.shape[0], -1)
    n_gt = np.count_nonzero(inside, axis=1)
    constant = flat.max(axis=1) == 0
    peak = flat_raw.argmax(axis=1)  # CheXlocalize: np.argmax of the upsampled map, first maximum
    hit = inside[np.arange(len(peak)), peak].astype(float)
    hit[(n_gt == 0) | constant] = np.nan
    mass = _divide(np.sum(flat, axis=1, where=inside, dtype=np.float64), np.sum(flat, axis=1, dtype=np.float64))
    mass[n_gt == 0] = np.nan
    rank_auc = np.array([_rank_auc(v, m) for v, m in zip(flat, inside)], float).reshape(-1, 2)
    return {"hit": hit, "mass": mass, "rank": rank_auc[:, 0], "auc": rank_auc[:, 1]}


def score_batch(heatmaps: np.ndarray, masks: np.ndarray, threshold: str | Threshold = "otsu",
                rule: str = "true_positive_only", *, threshold_free: bool = True) -> dict[str, np.ndarray]:
    """Every metric for a stack of heatmaps against a stack of expert masks, vectorised.

    Parameters
    ----------
    heatmaps : (N, h, w) or (h, w) ndarray
        Raw or normalised maps; resized bilinearly to the masks' size when theirs differs.
    masks : (N, H, W) or (H, W) boolean ndarray
        Expert masks at the X-ray's original size.
    threshold : str or Threshold
        ``"otsu"`` (default), ``"0.5"``, ``"top15%"``: see :class:`~cxr_core.explain.binarize.Threshold`.
    rule : {"true_positive_only", "full"}
        Empty-mask rule for the mask metrics.
    threshold_free : bool, keyword-only
        Also compute hit, mass, rank and AUC. They do not depend on the threshold, so a caller
        trying a new threshold can skip them.

    Returns
    -------
    dict of (N,) float arrays
        ``iou``, ``dice``, ``precision``, ``recall``, ``pred_fraction``, ``gt_fraction`` and, with
        ``threshold_free``, ``hit``, ``mass``, ``rank``, ``auc``.
    """
    spec = Threshold.parse(threshold)
    _check_rule(rule)
    maps, gts, _ = _pair(check_maps(heatmaps), _as_masks(masks, "expert mask"), ("heatmaps", "masks"))
    rows, cols = gts.shape[1:]
    keys = ["iou", "dice", "precision", "recall", "pred_fraction", "gt_fraction"]
    keys += list(MAP_METRICS) if threshold_free else []
    out = {k: np.empty(maps.shape[0]) for k in keys}
    step = max(1, _CHUNK_PIXELS // (rows * cols))
    for start in range(0, maps.shape[0], step):
        part = slice(start, start + step)
        # inputs were checked once for the whole stack, not once per chunk
        raw = maps[part] if maps.shape[1:] == (rows, cols) else upsample(maps[part], (rows, cols), checked=True)
        norm = normalize(raw, checked=True)
        pred = binarize_normalized(norm, spec)
        results = mask_metrics(pred, gts[part], rule=rule)
        if threshold_free:
            results.update(_map_metrics(raw, norm, gts[part]))
        for key in keys:
            out[key][part] = results[key]
    return out


def score_image(heatmap: np.ndarray, mask: np.ndarray, threshold: str | Threshold = "otsu",
                rule: str = "true_positive_only") -> dict[str, float]:
    """:func:`score_batch` for one ``(h, w)`` heatmap and one ``(H, W)`` mask; floats back."""
    if np.ndim(heatmap) != 2 or np.ndim(mask) != 2:
        raise AgreementInputError(
            f"score_image takes one 2-D heatmap and one 2-D mask; got shapes {np.shape(heatmap)} and {np.shape(mask)}")
    return {k: float(v[0]) for k, v in score_batch(heatmap, mask, threshold, rule).items()}


def _per_image(value: str | Sequence[str], n: int, name: str) -> list[str]:
    if isinstance(value, str):
        return [value] * n
    values = [str(v) for v in value]
    if len(values) != n:
        raise AgreementInputError(f"{name} has {len(values)} entries for {n} images")
    return values


def score_records(heatmaps: np.ndarray, masks: np.ndarray, *, image_ids: Sequence[str], model: str,
                  method: str, target: str | Sequence[str], reader: str | Sequence[str],
                  session: str | Sequence[str], threshold: str | Threshold = "otsu",
                  rule: str = "true_positive_only") -> list[ImageScore]:
    """:func:`score_batch` turned into :class:`ImageScore` records carrying their threshold and rule.

    ``target``, ``reader`` and ``session`` are one string for all images or one per image.
    """
    spec = Threshold.parse(threshold)
    batch = score_batch(heatmaps, masks, spec, rule)
    n = len(batch["iou"])
    ids = _per_image(list(image_ids), n, "image_ids")
    targets, readers, sessions = (_per_image(v, n, k) for v, k in
                                  ((target, "target"), (reader, "reader"), (session, "session")))
    fields = [*METRICS, "pred_fraction", "gt_fraction"]
    return [ImageScore(image_id=ids[i], model=model, method=method, target=targets[i], reader=readers[i],
                       session=sessions[i], threshold=str(spec), rule=rule,
                       **{k: float(batch[k][i]) for k in fields}) for i in range(n)]


AGGREGATE_METRICS = ("iou", "dice", "hit", "mass", "rank", "auc")
GROUP_FIELDS = ("model", "method", "target", "reader", "session")


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval over ``n`` images where the metric is defined."""

    mean: float
    lo: float
    hi: float
    n: int


@dataclass(frozen=True)
class GroupSummary:
    """One aggregate row: the group's keys (always with threshold and rule), its size, metrics.

    ``normal`` marks groups of "Normal" images: there is no lesion to localise, so they are kept
    apart from the localisation means rather than averaged into them.
    """

    group: dict[str, str]
    normal: bool
    n_images: int
    metrics: dict[str, Interval]

    def to_dict(self) -> dict:
        row: dict = {**self.group, "normal": self.normal, "n_images": self.n_images}
        for name, iv in self.metrics.items():
            row.update({f"{name}_mean": iv.mean, f"{name}_lo": iv.lo, f"{name}_hi": iv.hi, f"{name}_n": iv.n})
        return row


def aggregate(scores: Sequence[ImageScore], by: Sequence[str] = GROUP_FIELDS, *,
              metrics: Sequence[str] = AGGREGATE_METRICS, n_boot: int = 1000, seed: int = 0,
              alpha: float = 0.05, normal_classes: Sequence[str] = ("Normal",)) -> list[GroupSummary]:
    """Mean and bootstrap interval of each metric per group of :class:`ImageScore` records.

    Groups are the values of ``by`` plus ``threshold`` and ``rule`` (scores made differently are
    never pooled) plus whether ``target`` is one of ``normal_classes`` (case-insensitive), so Normal
    images stay apart even when ``target`` is not a grouping field. Non-normal groups come first.
    """
    unknown = [f for f in by if f not in GROUP_FIELDS]
    bad_metrics = [m for m in metrics if m not in METRICS]
    if unknown or bad_metrics:
        raise AgreementInputError(f"cannot group by {unknown} or summarise {bad_metrics}; "
                                  f"accepted fields: {', '.join(GROUP_FIELDS)}; metrics: {', '.join(METRICS)}")
    normal_set = {c.strip().lower() for c in normal_classes}
    groups: dict[tuple, list[ImageScore]] = {}
    for s in scores:
        key = (s.target.strip().lower() in normal_set, *(getattr(s, f) for f in by), s.threshold, s.rule)
        groups.setdefault(key, []).append(s)
    rows = []
    for key in sorted(groups):
        members = groups[key]
        summary = {}
        for m in metrics:
            values = np.array([getattr(s, m) for s in members], float)
            summary[m] = Interval(*bootstrap_ci(values, n_boot=n_boot, seed=seed, level=1 - alpha),
                                 int(np.isfinite(values).sum()))
        names = (*by, "threshold", "rule")
        rows.append(GroupSummary(dict(zip(names, key[1:])), bool(key[0]), len(members), summary))
    return rows


@dataclass(frozen=True)
class ReaderPair:
    """Agreement between two readers' masks on one image."""

    image_id: str
    reader_a: str
    reader_b: str
    iou: float
    dice: float


def reader_agreement(masks: Mapping[str, Mapping[str, np.ndarray]], *,
                     rule: str = "true_positive_only") -> list[ReaderPair]:
    """IoU and Dice for every pair of readers on every image marked by two or more of them.

    ``masks`` maps image id -> reader -> boolean mask. Readers are paired in name order; the
    empty-mask ``rule`` is that of :func:`mask_metrics`.
    """
    pairs = []
    for image_id in sorted(masks):
        readers = sorted(masks[image_id])
        for i, a in enumerate(readers):
            for b in readers[i + 1:]:
                ma, mb = np.asarray(masks[image_id][a]), np.asarray(masks[image_id][b])
                if ma.shape != mb.shape or ma.ndim != 2:
                    raise AgreementInputError(f"image {image_id!r}: readers {a!r} and {b!r} gave masks of shapes "
                                              f"{ma.shape} and {mb.shape}; expected equal 2-D shapes")
                r = mask_metrics(ma, mb, rule=rule)
                pairs.append(ReaderPair(image_id, a, b, r["iou"], r["dice"]))
    return pairs


@dataclass(frozen=True)
class DiagnosisAgreement:
    """Expert-versus-model diagnosis agreement: confusion matrix (rows expert, columns model)."""

    labels: tuple[str, ...]
    matrix: np.ndarray
    kappa: float
    kappa_lo: float
    kappa_hi: float
    agreement: float
    n: int

    def to_dict(self) -> dict:
        return {**asdict(self), "labels": list(self.labels), "matrix": self.matrix.tolist()}


def _kappa(matrices: np.ndarray) -> np.ndarray:
    """Cohen's kappa of a stack of (L, L) confusion matrices; NaN where chance agreement is 1."""
    total = matrices.sum(axis=(-2, -1)).astype(float)
    observed = np.trace(matrices, axis1=-2, axis2=-1) / total
    chance = (matrices.sum(axis=-1) * matrices.sum(axis=-2)).sum(axis=-1) / total**2
    return _divide(observed - chance, 1.0 - chance)


def diagnosis_agreement(expert: Sequence[str], model: Sequence[str], *, labels: Sequence[str] | None = None,
                        n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> DiagnosisAgreement:
    """Confusion matrix and Cohen's kappa (scikit-learn) with a seeded bootstrap interval over images.

    Kappa is NaN when it is undefined (both raters used one and the same label throughout).
    """
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    expert, model = [str(e) for e in expert], [str(m) for m in model]
    if len(expert) != len(model) or not expert:
        raise AgreementInputError(
            f"need equal, non-zero numbers of expert and model labels; got {len(expert)} and {len(model)}")
    names = tuple(labels) if labels is not None else tuple(sorted(set(expert) | set(model)))
    stray = sorted((set(expert) | set(model)) - set(names))
    if stray:
        raise AgreementInputError(f"labels {stray} are not among the accepted labels {list(names)}")
    with warnings.catch_warnings():  # one label only: sklearn warns, kappa is NaN below anyway
        warnings.simplefilter("ignore")
        matrix = confusion_matrix(expert, model, labels=list(names))
        kappa = float(cohen_kappa_score(expert, model, labels=list(names))) if len(names) > 1 else np.nan
    # Bootstrap: resample images; a replicate's confusion matrix is its counts times the one-hot cells.
    size = len(names)
    index = {name: i for i, name in enumerate(names)}
    cells = np.eye(size * size)[[index[e] * size + index[m] for e, m in zip(expert, model)]]
    reps = bootstrap(lambda counts: _kappa((counts @ cells).reshape(-1, size, size)), len(expert),
                     n_boot=n_boot, seed=seed)
    lo, hi = percentile_interval(reps, 1 - alpha)
    return DiagnosisAgreement(names, matrix, kappa, float(lo), float(hi),
                              float(np.trace(matrix)) / len(expert), len(expert))


__all__ = [
    "AGGREGATE_METRICS", "AgreementInputError", "DiagnosisAgreement", "GROUP_FIELDS", "GroupSummary",
    "HeatmapError", "ImageScore", "Interval", "MAP_METRICS", "MASK_METRICS", "METRICS", "RULES", "ReaderPair",
    "ReportError",
    "aggregate", "bootstrap_ci", "diagnosis_agreement", "mask_metrics", "reader_agreement", "score_batch",
    "score_image", "score_records",
]
