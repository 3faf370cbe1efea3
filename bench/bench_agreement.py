"""Recomputing a session's agreement for a new threshold: vectorised versus a plain per-image loop.

A session of N images at S x S (default 1,000 at 1024 x 1024) is generated in chunks: smooth
Grad-CAM-like heatmaps (a random 7x7 grid upsampled bilinearly and normalised, as cam.py
delivers them: at image size) and expert masks of one to three filled ellipses (5% empty). Times:

- ``score_batch`` on each chunk, all metrics (IoU, Dice, precision, recall, hit, mass, rank, AUC);
- ``score_batch(threshold_free=False)``: only what a new threshold changes (mask + IoU/Dice/P/R);
- a plain per-image loop, the way one would first write it (numpy per image, contours filled one by
  one, ``np.argsort`` for relevance rank, ``sklearn.metrics.roc_auc_score`` for AUC), timed on a
  subset and extrapolated to N (stated in the output);
- ``score_batch`` called one image at a time on the same subset (the batch's own share of the gain).

Generation time is excluded. Wall and CPU (process) seconds are both printed: on a shared machine
the CPU figure is the steadier one. Run: ``python bench/bench_agreement.py [--n 1000 --size 1024]``.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score  # imported before any timing

from cxr_core.agreement import score_batch


def make_chunk(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    heatmaps = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        h = cv2.resize(rng.random((7, 7)).astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        heatmaps[i] = (h - h.min()) / (h.max() - h.min())
        if rng.random() < 0.05:
            continue
        for _ in range(rng.integers(1, 4)):
            centre = tuple(int(v) for v in rng.integers(size // 5, 4 * size // 5, 2))
            axes = tuple(int(v) for v in rng.integers(size // 16, size // 4, 2))
            cv2.ellipse(masks[i], centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return heatmaps, masks.astype(bool)


def plain_scores(h: np.ndarray, m: np.ndarray, threshold: float) -> dict[str, float]:
    """The straightforward per-image version: what a per-image Python loop would call."""
    hn = (h - h.min()) / (h.max() - h.min())
    binary = (hn > threshold).astype(np.uint8)
    pred = np.zeros_like(binary)
    for c in cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]:
        if len(c) > 1:
            cv2.drawContours(pred, [c], 0, 1, thickness=-1)
    pred = pred.astype(bool)
    inter, union = np.logical_and(pred, m).sum(), np.logical_or(pred, m).sum()
    n_p, n_g = pred.sum(), m.sum()
    out = {"iou": inter / union if n_p and n_g else np.nan, "dice": 2 * inter / (n_p + n_g) if n_p and n_g else np.nan,
           "precision": inter / n_p if n_p and n_g else np.nan, "recall": inter / n_g if n_p and n_g else np.nan}
    if n_g == 0:
        return {**out, "hit": np.nan, "mass": np.nan, "rank": np.nan, "auc": np.nan}
    r, c = np.unravel_index(np.argmax(h), h.shape)
    top = np.argsort(hn.ravel())[::-1][:n_g]
    return {**out, "hit": float(m[r, c]), "mass": float((hn * m).sum() / hn.sum()),
            "rank": float(m.ravel()[top].mean()), "auc": float(roc_auc_score(m.ravel(), hn.ravel()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images in the session")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--chunk", type=int, default=50, help="images generated and scored at a time")
    parser.add_argument("--subset", type=int, default=20, help="images timed in the per-image loops")
    parser.add_argument("--threshold", default="0.4", help="the new threshold (a fixed cut, as the page's slider)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    t_full = t_mask = c_full = c_mask = 0.0
    subset: tuple[np.ndarray, np.ndarray] | None = None
    ious = []
    for start in range(0, args.n, args.chunk):
        heat, masks = make_chunk(rng, min(args.chunk, args.n - start), args.size)
        if subset is None:
            subset = heat[: args.subset].copy(), masks[: args.subset].copy()
        t0, c0 = time.perf_counter(), time.process_time()
        full = score_batch(heat, masks, args.threshold)
        t1, c1 = time.perf_counter(), time.process_time()
        score_batch(heat, masks, args.threshold, threshold_free=False)
        t_full += t1 - t0
        c_full += c1 - c0
        t_mask += time.perf_counter() - t1
        c_mask += time.process_time() - c1
        ious.append(full["iou"])
    heat, masks = subset
    k = len(heat)
    t0, c0 = time.perf_counter(), time.process_time()
    plain = [plain_scores(h, m, float(args.threshold)) for h, m in zip(heat, masks)]
    t_plain, c_plain = (time.perf_counter() - t0) * args.n / k, (time.process_time() - c0) * args.n / k
    t0, c0 = time.perf_counter(), time.process_time()
    single = [score_batch(h, m, args.threshold) for h, m in zip(heat, masks)]
    t_single, c_single = (time.perf_counter() - t0) * args.n / k, (time.process_time() - c0) * args.n / k
    batch = score_batch(heat, masks, args.threshold)
    worst = max(abs(p[key] - batch[key][i]) for i, p in enumerate(plain) for key in p
                if np.isfinite(p[key]) and key != "rank")
    iou = np.concatenate(ious)
    print(f"session: {args.n} images at {args.size}x{args.size}, new threshold {args.threshold}, "
          f"mean IoU {np.nanmean(iou):.3f} ({np.isfinite(iou).sum()} defined)")
    rows = [("vectorised score_batch, all metrics", t_full, c_full, ""),
            ("vectorised, threshold-dependent only", t_mask, c_mask, ""),
            ("plain per-image loop, all metrics", t_plain, c_plain, f"timed on {k} images, x{args.n / k:g}"),
            ("score_batch one image at a time", t_single, c_single, f"timed on {k} images, x{args.n / k:g}")]
    for name, wall, cpu, note in rows:
        print(f"{name:<40}{wall:8.1f} s wall {cpu:8.1f} s CPU ({1000 * cpu / args.n:.1f} ms/image CPU) {note}")
    print(f"ratio plain loop / vectorised, all metrics: {t_plain / t_full:.1f}x wall, {c_plain / c_full:.1f}x CPU")
    print(f"ratio plain loop / threshold-only recompute: {t_plain / t_mask:.1f}x wall, {c_plain / c_mask:.1f}x CPU")
    print(f"ratio one-at-a-time / batch: {t_single / t_full:.2f}x wall, {c_single / c_full:.2f}x CPU")
    print(f"largest difference plain vs vectorised on the subset (IoU, Dice, P, R, hit, mass, AUC): {worst:.2e}")
    del single


if __name__ == "__main__":
    main()
