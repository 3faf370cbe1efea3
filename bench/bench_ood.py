"""Which refusal rule for the demo model? AUROC and refusal rates on real films versus non-chest inputs.

In-distribution: the real chest films of the model's own patient-disjoint split. Every detector is
fitted on the training side with the threshold rule of ``cxr_core.screening.fit_detector`` (a
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

from cxr_core.ood import evaluate_detector, image_checks  # noqa: E402

SOURCES = ("pool", "hidden_1", "lungseg")
METHODS = (("knn", 1), ("knn", 3), ("knn", 5), ("mahalanobis", 0))


def upper95(refused: int, n: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound of a rate seen as ``refused`` of ``n``."""
    from scipy.stats import beta

    return 1.0 if refused >= n else float(beta.ppf(0.95, refused + 1, n - refused))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo-efficientnetv2b0")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "cxr-real")
    p.add_argument("--percentile", type=float, default=99.0)
    args = p.parse_args(argv)

    from cxr_core.dataset import apply_split, by_split, load_records, read_split_csv
    from cxr_core.imaging import load_xray
    from cxr_core.manifest import _weights_dir, load_model
    from cxr_core.predict import predict_arrays
    from cxr_core.runtime import import_tensorflow_quietly
    from cxr_core.screening import features_for, fit_detector
    from cxr_core.train import SPLIT_FILE

    import_tensorflow_quietly()
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    records = apply_split(load_records(args.data), read_split_csv(_weights_dir(None) / args.model / SPLIT_FILE),
                          root=args.data)
    sides = by_split(records)
    groups = [r.patient_id for r in sides["train"]]
    xrays = {s: [load_xray(r.file) for r in sides[s]] for s in ("train", "val", "test")}
    pixels = {s: [x.pixels for x in v] for s, v in xrays.items()}
    checks = {s: np.array([bool(image_checks(x.pixels, was_color=x.was_color, colorfulness=x.colorfulness,
                                             metadata=x.metadata)) for x in xrays[s]]) for s in ("val", "test")}
    held_checks = np.r_[checks["val"], checks["test"]]
    step = max(1, len(xrays["test"]) // 60)
    samples = ood_samples(pixels["test"][::step])
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

    ok = {n: r for n, r in results.items() if r[3].mean() <= 0.01}
    best = max(ok or results, key=lambda n: (results[n][4].mean(), -results[n][3].mean()))
    src, method, k, comb_in, comb_out = results[best]
    print(f"\nchosen: {best} + image checks (most non-chest inputs refused with at most 1% of real films refused)")
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
