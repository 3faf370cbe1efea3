"""Audit throughput and memory: batch 16 vs batch 1, and peak Python/NumPy memory at N vs 4N images.

Usage: python bench/bench_audit.py [--n 32]

Uses a random 64 px EfficientNetV2B0 and synthetic 256 px films with expert masks (so the numbers
measure the audit's own work, not the lung U-Net). Memory is traced with tracemalloc, which sees
NumPy arrays but not TensorFlow's buffers; a flat audit keeps the peak nearly the same at 4N.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxr_core.audit import AuditItem, run_audit  # noqa: E402
from cxr_core.models.runtime import import_tensorflow_quietly  # noqa: E402


def films(folder: Path, n: int) -> list[AuditItem]:
    rng = np.random.default_rng(0)
    lungs = np.zeros((256, 256), np.uint8)
    lungs[50:210, 30:115] = lungs[50:210, 140:225] = 255
    items = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.uniform(0, 255, (256, 256)).astype(np.uint8), (9, 9), 3)
        cv2.putText(img, "R", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)
        cv2.imwrite(str(folder / f"f{i:05d}.png"), img)
        cv2.imwrite(str(folder / f"f{i:05d}_lungs.png"), lungs)
        items.append(AuditItem(folder / f"f{i:05d}.png", "Normal" if i % 2 else "COVID-19"))
    return items


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    args = ap.parse_args()
    import_tensorflow_quietly()
    from cxr_core.explain.cam import CamEngine
    from cxr_core.models.zoo import build_model, get_spec

    classes = ("COVID-19", "Normal")
    model = build_model("efficientnetv2b0", classes, weights=None, input_size=64)
    engine = CamEngine.from_model(model, get_spec("efficientnetv2b0").with_overrides(input_size=64), classes)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        items = films(folder, 4 * args.n)
        run_audit(engine, items[:4], lung_masks=folder, batch_size=4)  # trace once
        timing = {}
        for batch in (1, 16):
            t0 = time.perf_counter()
            run_audit(engine, items[:args.n], lung_masks=folder, batch_size=batch)
            timing[batch] = time.perf_counter() - t0
        peaks = {}
        for n in (args.n, 4 * args.n):
            tracemalloc.start()
            run_audit(engine, items[:n], lung_masks=folder, batch_size=16)
            peaks[n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    print(f"{args.n} images: batch 1 {timing[1]:.1f} s, batch 16 {timing[16]:.1f} s, ratio {timing[1] / timing[16]:.2f}x")
    print(f"peak traced memory: {args.n} images {peaks[args.n] / 1e6:.1f} MB, {4 * args.n} images "
          f"{peaks[4 * args.n] / 1e6:.1f} MB, ratio {peaks[4 * args.n] / peaks[args.n]:.2f} (4x the images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
