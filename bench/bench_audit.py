"""Audit throughput and memory: batch 16 vs batch 1, and peak Python/NumPy memory at N vs 4N images.

Usage: python bench/bench_audit.py [--n 32]

Uses a random 64 px EfficientNetV2B0 and synthetic 256 px films with expert masks (so the numbers
measure the audit's own work, not the lung U-Net). Memory is traced with tracemalloc, which sees
NumPy arrays but not TensorFlow's buffers; a flat audit keeps the peak nearly the same at 4N.

Cost as work grows (issue 17): the archive engines (:mod:`cxr_core.engines.batch`, ``--parquet``) on
500, 2,000 and 8,000 films, local and Ray, each run in a fresh process: films per second, peak memory
(resident set of the process and every process it started: Ray's raylet, workers and actors), and the
projected time for 100,000 films per worker (one worker: the local process, or one Ray actor).
Films are 256 px copies of the fixture X-rays with a little noise (so every hash differs) and expert lung
masks; the model is a registered 64 px EfficientNetV2B0 with random weights (the cost of the engines, not
of a big network). ``--sizes 500 2000`` for a shorter run, ``--skip-engines`` for the first part only.
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000], help="archive sizes (films)")
    ap.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--skip-engines", action="store_true", help="only batch 16 vs 1 and traced memory")
    ap.add_argument("--one", nargs=4, metavar=("ENGINE", "N", "FILMS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one_engine_run(*args.one)
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
    if not args.skip_engines:
        engine_scaling(sorted(args.sizes), args.engines)
    return 0


# --------------------------------------------------------------------------------------------
# Cost as work grows: the archive engines at 500 / 2,000 / 8,000 films
# --------------------------------------------------------------------------------------------

TINY = "bench-tiny-effnet"
PER_WORKER = 100_000


def archive_films(folder: Path, n: int) -> Path:
    """``n`` 256 px noisy copies of the fixture films plus expert lung masks, and a manifest; its path."""
    fixtures = sorted((Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cxr").glob("*.png"))
    bases = [cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (256, 256), interpolation=cv2.INTER_AREA)
             for f in fixtures]
    lungs = np.zeros((256, 256), np.uint8)
    lungs[50:210, 30:115] = lungs[50:210, 140:225] = 255
    rng = np.random.default_rng(0)
    lines = ["file,label"]
    for i in range(n):
        img = np.clip(bases[i % len(bases)].astype(np.int16) + rng.integers(-3, 4, (256, 256)), 0, 255)
        cv2.imwrite(str(folder / f"f{i:05d}.png"), img.astype(np.uint8))
        cv2.imwrite(str(folder / "masks" / f"f{i:05d}_lungs.png"), lungs)
        lines.append(f"f{i:05d}.png,{'Normal' if i % 2 else 'COVID-19'}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def register_tiny(weights: Path) -> None:
    from cxr_core.models.manifest import ModelCard, save_model
    from cxr_core.models.zoo import build_model, get_spec

    import keras

    keras.utils.set_random_seed(0)
    spec = get_spec("efficientnetv2b0")
    classes = ["COVID-19", "Normal"]
    model = build_model("efficientnetv2b0", classes, weights=None, input_size=64)
    save_model(model, ModelCard(name=TINY, architecture="efficientnetv2b0", classes=classes, input_size=64,
                                preprocessing=spec.preprocessing, last_conv_layer=spec.last_conv_layer), weights)


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (from /proc; Linux)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            rss[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    return sum(rss.get(p, 0) for p in tree)


def one_engine_run(engine: str, n: str, manifest: str, out: str) -> int:
    """Child process: one engine on the first ``n`` films of ``manifest``; prints a JSON line."""
    import json
    import threading

    from cxr_core.engines.batch import BatchSpec, list_films, run_local

    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(os.getpid()))
            stop.wait(0.5)

    threading.Thread(target=sample, daemon=True).start()
    films = list_films([manifest], int(n))
    spec = BatchSpec(TINY, "audit", lung_masks=str(Path(manifest).parent / "masks"), batch_size=16)
    first: list[tuple[float, int]] = []  # (time, films done) when the first batch came back: model loaded, traced

    def progress(done, total):
        if not first:
            first.append((time.perf_counter(), done))

    t0 = time.perf_counter()
    if engine == "ray":
        from cxr_core.engines.ray_engine import connect, run_ray

        connect()
        ready = time.perf_counter()
        summary = run_ray(films, spec, out, progress=progress)
        workers = int(summary.notes[0].split()[0])
    else:
        ready = t0
        summary = run_local(films, spec, out, progress=progress)
        workers = 1
    end = time.perf_counter()
    total = end - t0
    warm = (int(n) - first[0][1]) / (end - first[0][0]) if first and end > first[0][0] else float("nan")
    stop.set()
    print(json.dumps({"engine": engine, "n": int(n), "seconds": total, "startup": ready - t0,
                      "warm_rate": warm, "first_batch": first[0][0] - t0 if first else None, "scored": summary.scored, "refused": summary.refused, "errors": summary.errors,
                      "workers": workers, "peak_rss": max(peak[0], _tree_rss(os.getpid()))}))
    return 0


def engine_scaling(sizes: list[int], engines: list[str]) -> None:
    import json
    import os
    import platform
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "films" / "masks").mkdir(parents=True)
        register_tiny(root / "weights")
        manifest = archive_films(root / "films", max(sizes))
        env = {**os.environ, "CXR_WEIGHTS_DIR": str(root / "weights"), "CXR_DATA_DIR": str(root / "data"),
               "CXR_BACKEND": os.environ.get("CXR_BACKEND", "tensorflow"), "TF_CPP_MIN_LOG_LEVEL": "2"}
        print(f"\nArchive engines, audit mode (Grad-CAM + region shares), {os.cpu_count()} CPUs "
              f"({platform.processor() or platform.machine()}), engine {env['CXR_BACKEND']}, 256 px films, 64 px "
              "model, batch 16; peak = resident memory of the process and all it started")
        print("films/s: all films over the whole run; warm: after the first batch (model loaded and traced); "
              "projection: 100,000 films on one worker at the warm rate per worker")
        print(f"{'engine':<7}{'films':>7}{'seconds':>9}{'startup':>9}{'films/s':>9}{'warm':>8}{'workers':>8}"
              f"{'peak MB':>9}{'100k films/worker':>19}")
        for engine in engines:
            for n in sizes:
                out = root / f"out-{engine}-{n}"
                proc = subprocess.run([sys.executable, __file__, "--one", engine, str(n), str(manifest), str(out)],
                                      env=env, capture_output=True, text=True, timeout=3600)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode or not lines:
                    print(f"{engine:<7}{n:>7}  failed: {proc.stderr.strip()[-400:]}")
                    continue
                r = json.loads(lines[-1])
                rate = n / r["seconds"]
                hours = PER_WORKER / (r["warm_rate"] / r["workers"]) / 3600
                print(f"{engine:<7}{n:>7}{r['seconds']:>9.1f}{r['startup']:>9.1f}{rate:>9.1f}{r['warm_rate']:>8.1f}"
                      f"{r['workers']:>8}"
                      f"{r['peak_rss'] / 1e6:>9.0f}{hours:>17.2f} h"
                      + (f"  ({r['refused']} refused, {r['errors']} unreadable)" if r["refused"] or r["errors"]
                         else ""))


if __name__ == "__main__":
    raise SystemExit(main())
