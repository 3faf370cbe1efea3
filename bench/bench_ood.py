"""Refusal rates of the demo model's screening, and which refusal rule: real films versus non-chest inputs.

First the two rates the screening is held to (printed last as ``RATE`` lines):

- false refusals of real frontal chest films of held-out patients: all 520 films of ``cxr-real`` in
  5 patient-grouped folds; each fold is screened with image-check limits derived (``derive_limits``)
  and a detector fitted (``fit_detector`` with its defaults) on the other folds' patients only. Besides
  the stored films (adult ICU and ward COVID-19, the severe ieee8023 ARDS/COVID-19 films, pediatric
  Kermany, NIH adults), every second pediatric Kermany film is also screened restored to a
  full-resolution wide original (1200 px high, aspect 1.0 to 2.0: the 224 px copies were squeezed
  sideways from such originals; the real originals are held back and not in this folder);
- non-chest inputs refused by the shipped detector (``weights/<model>/ood.npz``) and the image checks.

In-distribution: the real chest films of the model's own patient-disjoint split. Every detector is
fitted on the training side with the threshold rule of ``cxr_core.safety.screening.fit_detector`` (a
percentile of patient-grouped cross-fitted training scores), then measured on the validation and
test sides: 158 films of patients neither the classifier nor the detector saw. Out-of-distribution:
``ood_samples`` of ``bench/ood_sets.py`` (photographs, documents, microscopy, CT/MR/NM/US slices, a
knee CR, rotated, inverted and cropped test films, noise, blanks).

Rows: image checks alone; each feature source (the classifier's ``pool`` and ``hidden_1`` outputs,
the lung U-Net's bottleneck) x method alone and combined with the image checks (refused when either
refuses); the maximum softmax probability as a baseline (thresholded on the validation films).

    python bench/bench_ood.py [--model demo-efficientnetv2b0] [--data ../shared/data/cxr-real]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ood_sets import ood_samples  # noqa: E402

from cxr_core.safety.detector import evaluate_detector  # noqa: E402
from cxr_core.safety.ood import (  # noqa: E402
    REAL_FILM_LIMITS,
    CheckLimits,
    derive_limits,
    image_checks,
    image_features,
    image_findings,
)

SOURCES = ("pool", "hidden_1", "lungseg")
METHODS = (("knn", 1), ("knn", 3), ("knn", 5), ("mahalanobis", 0))
WIDE_HEIGHT = 1200


def interval95(k: int, n: int) -> tuple[float, float]:
    """Two-sided 95 % Clopper-Pearson interval of a rate seen as ``k`` of ``n``."""
    from scipy.stats import beta

    return (0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1)),
            1.0 if k >= n else float(beta.ppf(0.975, k + 1, n - k)))


def widen(pixels: np.ndarray, aspect: float, height: int = WIDE_HEIGHT) -> np.ndarray:
    """A squeezed square film stretched back to a wide full-resolution original (bicubic, clipped to [0, 1])."""
    import cv2

    out = cv2.resize(np.asarray(pixels, np.float32), (int(round(height * aspect)), height),
                     interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0)


def patient_folds(patients: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold of each film; a patient's films share a fold."""
    unique = np.unique(patients)
    fold_of = dict(zip(np.random.default_rng(seed).permutation(unique), np.arange(len(unique)) % folds))
    return np.array([fold_of[p] for p in patients])


def screen_findings(detector, limits: CheckLimits, pixels, feats, xrays=None) -> list[list]:
    """What ``Screener.screen`` finds, with the given limits and detector (features already computed)."""
    out = []
    for i, (x, f) in enumerate(zip(pixels, feats)):
        xr = xrays[i] if xrays is not None else None
        found = image_findings(x, was_color=getattr(xr, "was_color", False),
                               colorfulness=getattr(xr, "colorfulness", None),
                               metadata=getattr(xr, "metadata", None), limits=limits)
        extra = detector.finding(float(detector.score(f[None])[0]))
        out.append(found + ([extra] if extra else []))
    return out


def held_out_false_refusals(records, xrays, lung, wide_idx, wide_aspects, wide_lung, seed: int = 0) -> np.ndarray:
    """Refusals of real films of held-out patients (stored films, then the widened ones), cross-fitted by patient."""
    from cxr_core.safety.screening import fit_detector

    patients = np.array([r.patient_id for r in records])
    fold = patient_folds(patients, seed=seed)
    pixels = [x.pixels for x in xrays]
    feats_all = [image_features(p) for p in pixels]
    refused = np.zeros(len(records), bool)
    refused_wide = np.zeros(len(wide_idx), bool)
    why = {}
    for i in range(int(fold.max()) + 1):
        fit, test = fold != i, np.flatnonzero(fold == i)
        limits = derive_limits([f for f, m in zip(feats_all, fit) if m])
        det = fit_detector(lung[fit], patients[fit])
        found = screen_findings(det, limits, [pixels[j] for j in test], lung[test], [xrays[j] for j in test])
        for j, f in zip(test, found):
            refused[j] = bool(f)
            if f:
                why[records[j].file.name] = f
        for w in np.flatnonzero(fold[wide_idx] == i):
            big = widen(pixels[wide_idx[w]], wide_aspects[w])
            f = screen_findings(det, limits, [big], wide_lung[w][None])[0]
            refused_wide[w] = bool(f)
            if f:
                why[f"{records[wide_idx[w]].file.name} widened to {wide_aspects[w]:.2f}"] = f
    return refused, refused_wide, why


def upper95(refused: int, n: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound of a rate seen as ``refused`` of ``n``."""
    from scipy.stats import beta

    return 1.0 if refused >= n else float(beta.ppf(0.95, refused + 1, n - refused))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo-efficientnetv2b0")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "cxr-real")
    p.add_argument("--percentile", type=float, default=None, help="table's threshold percentile (default: the "
                                                                      "detector default)")
    p.add_argument("--quick", action="store_true", help="the two rates only, without the table of rules")
    args = p.parse_args(argv)

    from cxr_core.training.dataset import apply_split, by_split, load_records, read_split_csv
    from cxr_core.io.imaging import load_xray
    from cxr_core.models.manifest import load_model, model_folder
    from cxr_core.safety.detector import DEFAULT_K, DEFAULT_METHOD, DEFAULT_PERCENTILE
    from cxr_core.models.runtime import import_tensorflow_quietly
    from cxr_core.safety.screening import load_detector, lung_features
    from cxr_core.training.train import SPLIT_FILE

    import_tensorflow_quietly()
    t0 = time.perf_counter()
    args.percentile = DEFAULT_PERCENTILE if args.percentile is None else args.percentile
    loaded = load_model(args.model)
    records = apply_split(load_records(args.data), read_split_csv(model_folder(args.model) / SPLIT_FILE),
                          root=args.data)
    xrays_all = [load_xray(r.file) for r in records]
    pixels_all = [x.pixels for x in xrays_all]
    lung_all = lung_features(pixels_all)
    sources = np.array([r.source for r in records])

    # -- limits from data --------------------------------------------------------------------------
    derived = derive_limits([image_features(x) for x in pixels_all])
    print(f"image-check limits derived from the {len(records)} real films (worst film + half its distance from "
          "the median):")
    for name in ("min_std", "max_high_freq", "max_dominant_grey", "min_grey_entropy", "min_layout"):
        print(f"  {name:18s} derived {getattr(derived, name):8.4f}   shipped {getattr(REAL_FILM_LIMITS, name):8.4f}")

    # -- rate 1: false refusals of real films of held-out patients -----------------------------------
    kermany = np.flatnonzero(sources == "kermany224")
    wide_idx = kermany[::2]
    wide_aspects = np.linspace(1.0, 2.0, len(wide_idx))
    wide_lung = np.concatenate([lung_features([widen(pixels_all[i], a) for i, a in zip(wide_idx[s:s + 16],
                                                                                       wide_aspects[s:s + 16])])
                                for s in range(0, len(wide_idx), 16)])
    refused, refused_wide, why = held_out_false_refusals(records, xrays_all, lung_all, wide_idx, wide_aspects,
                                                          wide_lung)
    print(f"\nfalse refusals of real films of held-out patients (5 patient-grouped folds; limits and detector "
          f"({DEFAULT_METHOD} k={DEFAULT_K}, {DEFAULT_PERCENTILE:g}th percentile) fitted without the fold's patients):")
    severe = np.array(["ieee8023" in s_ for s_ in sources])
    rows = [(f"{s_} (stored)", refused[sources == s_]) for s_ in dict.fromkeys(sources)]
    rows.append(("  of which ieee8023 severe/ARDS", refused[severe]))
    rows.append(("kermany pediatric, full-res wide", refused_wide))
    for name, r in rows:
        lo, hi = interval95(int(r.sum()), len(r))
        print(f"  {name:34s} {r.sum():3d} of {len(r):3d}  ({r.mean():5.1%}; 95% CI {lo:.1%}-{hi:.1%})")
    print(f"  widened aspects {wide_aspects.min():.2f}-{wide_aspects.max():.2f}; refused films:")
    for name, f in why.items():
        print(f"    {name}: " + " | ".join(f"{x.reason} [{x.details}]" for x in f))
    n_real = len(refused) + len(refused_wide)
    k_real = int(refused.sum() + refused_wide.sum())

    # -- rate 2: non-chest inputs refused by the shipped screening ------------------------------------
    sides = by_split(records)
    test_pixels = [x.pixels for x, r in zip(xrays_all, records) if r.split == "test"]
    step = max(1, len(test_pixels) // 60)
    samples = ood_samples(test_pixels[::step])
    ood = [s_ for s_ in samples if s_.group != "chest-cr"]
    groups_ood = np.array([s_.group for s_ in ood])
    shipped, source = load_detector(loaded)
    if shipped is None:
        raise SystemExit(f"{args.model} has no OOD detector in its card; run calibrate --record first")
    lung_ood = lung_features([s_.pixels for s_ in ood])
    found_ood = screen_findings(shipped, REAL_FILM_LIMITS, [s_.pixels for s_ in ood], lung_ood, ood)
    ood_refused = np.array([bool(f) for f in found_ood])
    held = np.array([r.split in ("val", "test") for r in records])
    held_ref = np.array([bool(f) for f in screen_findings(shipped, REAL_FILM_LIMITS, [pixels_all[i] for i in
                         np.flatnonzero(held)], lung_all[held], [xrays_all[i] for i in np.flatnonzero(held)])])
    print(f"\nshipped screening ({source} {shipped.method} k={shipped.k}, threshold {shipped.threshold:.4f} = "
          f"{shipped.percentile:g}th percentile; + image checks) on {len(ood)} non-chest inputs: "
          f"{ood_refused.sum()} refused ({ood_refused.mean():.1%})")
    print("  per group: " + ", ".join(f"{g} {ood_refused[groups_ood == g].mean():.0%}"
                                      for g in dict.fromkeys(groups_ood)))
    only = {}
    for f in found_ood:
        if len({x.check for x in f}) == 1:
            only[f[0].check] = only.get(f[0].check, 0) + 1
    print("  refused by one check only (what dropping it would let through): "
          + ", ".join(f"{c} {n}" for c, n in sorted(only.items())))
    missed = [s_.name for s_, r in zip(ood, ood_refused) if not r]
    if missed:
        print(f"  passed ({len(missed)}): {', '.join(missed[:20])}")
    print(f"  and {held_ref.sum()} of {held.sum()} val + test films (patients it never saw) refused")
    lo, hi = interval95(k_real, n_real)
    print(f"\nRATE false refusals of real frontal chest films (held-out patients, cross-fitted): {k_real} of {n_real} "
          f"= {k_real / n_real:.2%} (95% CI {lo:.2%}-{hi:.2%}; target <= 1%)")
    print(f"RATE non-chest inputs refused (shipped detector + image checks): {ood_refused.sum()} of {len(ood)} "
          f"= {ood_refused.mean():.1%} (target >= 99%)")
    if args.quick:
        print(f"({time.perf_counter() - t0:.0f} s)")
        return
    table(args, loaded, records, sides, xrays_all, samples, t0)


def table(args, loaded, records, sides, xrays_all, samples, t0) -> None:
    """Every feature source x method, alone and with the image checks, fitted on the training split."""
    from cxr_core.models.predict import predict_arrays
    from cxr_core.safety.screening import features_for, fit_detector

    print("\n--- which rule: every feature source and method, fitted on the training split ---")
    index = {r.file: x for r, x in zip(records, xrays_all)}
    groups = [r.patient_id for r in sides["train"]]
    xrays = {s: [index[r.file] for r in sides[s]] for s in ("train", "val", "test")}
    pixels = {s: [x.pixels for x in v] for s, v in xrays.items()}
    checks = {s: np.array([bool(image_checks(x.pixels, was_color=x.was_color, colorfulness=x.colorfulness,
                                             metadata=x.metadata)) for x in xrays[s]]) for s in ("val", "test")}
    held_checks = np.r_[checks["val"], checks["test"]]
    chest_cr = [s for s in samples if s.group == "chest-cr"]
    ood = [s for s in samples if s.group != "chest-cr"]
    pixels["ood"], pixels["chest-cr"] = [s.pixels for s in ood], [s.pixels for s in chest_cr]
    ood_checks = np.array([bool(image_checks(s.pixels, was_color=s.was_color, colorfulness=s.colorfulness,
                                             metadata=s.metadata)) for s in ood])
    groups_ood = np.array([s.group for s in ood])
    feats = {src: {s: features_for(loaded, pixels[s], src) for s in pixels} for src in SOURCES}
    n_held = len(held_checks)
    print(f"{args.model}: detectors fitted on {len(groups)} training films ({len(set(groups))} patients), threshold "
          f"= {args.percentile:g}th percentile of their patient-grouped 5-fold cross-fitted scores; measured on "
          f"{len(xrays['val'])} val + {len(xrays['test'])} test films vs {len(ood)} non-chest inputs "
          f"({', '.join(f'{g} {n}' for g, n in zip(*np.unique(groups_ood, return_counts=True)))})")
    print("FRR: real films refused (val + test); AUROC: test films vs non-chest inputs\n")
    print(f"{'rule':30s} {'AUROC':>6s} {'FRR':>6s} {'OOD ref':>8s} | {'+checks: FRR':>12s} {'(95% up)':>8s} "
          f"{'OOD ref':>8s}")
    print(f"{'image checks only':30s} {'':>6s} {'':>6s} {'':>8s} | {held_checks.mean():12.1%} "
          f"{upper95(held_checks.sum(), n_held):8.1%} {ood_checks.mean():8.1%}")
    results = {}
    for src in SOURCES:
        f = feats[src]
        for method, k in METHODS:
            det = fit_detector(f["train"], groups, method=method, k=max(k, 1), percentile=args.percentile)
            s_held = det.score(np.r_[f["val"], f["test"]])
            s_out = det.score(f["ood"])
            auroc = evaluate_detector(det.score(f["test"]), s_out, det.threshold)["auroc"]
            alone_in, alone_out = s_held > det.threshold, s_out > det.threshold
            comb_in, comb_out = held_checks | alone_in, ood_checks | alone_out
            name = f"{src} {method}" + (f" k={k}" if method == "knn" else "")
            results[name] = (src, method, max(k, 1), comb_in, comb_out)
            print(f"{name:30s} {auroc:6.4f} {alone_in.mean():6.1%} {alone_out.mean():8.1%} | {comb_in.mean():12.1%} "
                  f"{upper95(comb_in.sum(), n_held):8.1%} {comb_out.mean():8.1%}")
    probs = {s: predict_arrays(loaded.model, loaded.spec, pixels[s]) for s in ("val", "test", "ood")}
    msp = {s: 1.0 - v.max(axis=1) for s, v in probs.items()}
    t = np.percentile(msp["val"], args.percentile)
    comb_in = checks["test"] | (msp["test"] > t)
    print(f"{'max softmax prob. (baseline)':30s} {evaluate_detector(msp['test'], msp['ood'])['auroc']:6.4f} "
          f"{np.mean(msp['test'] > t):6.1%} {np.mean(msp['ood'] > t):8.1%} | {comb_in.mean():12.1%} {'(test)':>8s} "
          f"{np.mean(ood_checks | (msp['ood'] > t)):8.1%}")

    from cxr_core.safety.detector import DEFAULT_K, DEFAULT_METHOD

    best = f"lungseg {DEFAULT_METHOD}" + (f" k={DEFAULT_K}" if DEFAULT_METHOD == "knn" else "")
    src, method, k, comb_in, comb_out = results[best]
    print(f"\nshipped rule: {best} + image checks (chosen on the held-out rates above: at most 1% of real films "
          "refused with at least 99% of non-chest inputs refused)")
    print(f"  real films refused: {comb_in.sum()} of {n_held} ({comb_in.mean():.1%}; 95% upper bound "
          f"{upper95(comb_in.sum(), n_held):.1%}); non-chest refused {comb_out.sum()} of {len(ood)} "
          f"({comb_out.mean():.1%})")
    print("  per group: " + ", ".join(f"{g} {comb_out[groups_ood == g].mean():.0%}" for g in dict.fromkeys(groups_ood)))
    missed = [s.name for s, r in zip(ood, comb_out) if not r]
    if missed:
        print(f"  passed ({len(missed)}): {', '.join(missed[:20])}" + (" ..." if len(missed) > 20 else ""))
    f = feats[src]
    if chest_cr:
        det = fit_detector(f["train"], groups, method=method, k=k, percentile=args.percentile)
        for s, score in zip(chest_cr, det.score(f["chest-cr"])):
            why = image_checks(s.pixels, metadata=s.metadata)
            print(f"  chest CR from another source ({s.name}): score {score:.3g}, threshold {det.threshold:.3g}; "
                  f"image checks: {why or 'pass'}")
    print(f"percentile sweep for {best} + image checks:")
    for pct in (95.0, 97.5, 99.0, 99.5, 100.0):
        det = fit_detector(f["train"], groups, method=method, k=k, percentile=pct)
        c_in = held_checks | (det.score(np.r_[f["val"], f["test"]]) > det.threshold)
        c_out = ood_checks | (det.score(f["ood"]) > det.threshold)
        print(f"  {pct:5.1f}: real films refused {c_in.mean():.1%}, non-chest refused {c_out.mean():.1%}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
