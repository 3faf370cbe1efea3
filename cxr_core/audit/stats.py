"""Per-class summaries of an audit: bootstrap means with intervals, and the shortcut flag.

Images of one patient are resampled together (the clustered bootstrap of :mod:`cxr_core.stats`)
when patient ids are known, so 22 films of one patient count as one patient's worth of evidence, not 22.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxr_core.safety.markers import CORNERS
from cxr_core.stats import percentile_interval, replicate_means

REGIONS = ("border", *CORNERS, "markers", "outside_lungs")
#: A class is a shortcut suspect when its mean outside-lung share beats every other class by this much.
SHORTCUT_MARGIN = 0.15


def _group_key(image, by: str) -> str:
    if by == "predicted":
        return image.predicted
    if by == "label":
        return image.label
    raise ValueError(f"by must be 'predicted' or 'label', got {by!r}")


def _values(images: Sequence, region: str) -> tuple[np.ndarray, np.ndarray]:
    kept = [im for im in images if im.shares.get(region) is not None]
    vals = np.array([im.shares[region] for im in kept], float)
    clusters = np.array([im.patient_id or im.file for im in kept])
    return vals, clusters


def summarise(images: Sequence, *, by: str = "predicted", regions: Sequence[str] = REGIONS,
              n_boot: int = 1000, seed: int = 0) -> dict:
    """Per class: image count, and per region the mean share, its 95 % bootstrap interval and the mean area.

    Returns
    -------
    dict
        ``{class: {"n": int, "n_patients": int, "regions": {region: {"mean", "low", "high", "area"}}}}``,
        classes sorted; images with an empty label are left out when ``by="label"``.
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, list] = {}
    for im in images:
        key = _group_key(im, by)
        if key:
            groups.setdefault(key, []).append(im)
    out = {}
    for cls in sorted(groups):
        members = groups[cls]
        stats = {}
        for region in regions:
            vals, clusters = _values(members, region)
            if not len(vals):
                stats[region] = {"mean": None, "low": None, "high": None, "area": None}
                continue
            low, high = percentile_interval(replicate_means(vals, clusters=clusters, n_boot=n_boot, seed=rng))
            stats[region] = {
                "mean": float(vals.mean()), "low": low, "high": high,
                "area": float(np.mean([im.areas[region] for im in members])),
            }
        out[cls] = {"n": len(members), "n_patients": len({m.patient_id or m.file for m in members}), "regions": stats}
    return out


def shortcut_flags(images: Sequence, *, by: str = "predicted", region: str = "outside_lungs",
                   margin: float = SHORTCUT_MARGIN, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Classes whose mean share in ``region`` beats every other class's by ``margin`` or more.

    A class is flagged when (its mean - the highest other class's mean) >= ``margin`` and the 2.5th
    percentile of the bootstrap difference (independent clustered resamples of the two classes) is
    above 0. Needs at least two classes.

    Returns
    -------
    list of dict
        ``{"class", "mean", "next_class", "next_mean", "difference", "low", "high"}`` per flagged class.
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for cls in sorted({_group_key(im, by) for im in images} - {""}):
        vals, clusters = _values([im for im in images if _group_key(im, by) == cls], region)
        if len(vals):
            groups[cls] = (vals, clusters)
    flags = []
    if len(groups) < 2:
        return flags
    means = {c: float(v.mean()) for c, (v, _) in groups.items()}
    for cls, (vals, clusters) in groups.items():
        nxt = max((c for c in means if c != cls), key=lambda c: means[c])
        diff = means[cls] - means[nxt]
        if diff < margin:
            continue
        other, other_clusters = groups[nxt]
        low, high = percentile_interval(replicate_means(vals, clusters=clusters, n_boot=n_boot, seed=rng)
                                        - replicate_means(other, clusters=other_clusters, n_boot=n_boot, seed=rng))
        if low > 0:
            flags.append({"class": cls, "mean": means[cls], "next_class": nxt, "next_mean": means[nxt],
                          "difference": diff, "low": low, "high": high, "region": region, "by": by})
    return flags


__all__ = ["REGIONS", "SHORTCUT_MARGIN", "summarise", "shortcut_flags"]
