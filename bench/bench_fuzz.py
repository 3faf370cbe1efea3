"""Fuzz the decoder at scale: 20,000+ damaged or hostile files, time and peak memory per case.

Cases come from ``tests/fuzz_cases.py`` (mutations of real-film seeds in every format and
transfer syntax at hand, the DICOM header defects of issue 15, huge declared sizes). Each case
runs through ``load_xray`` exactly as an upload does. Peak memory is traced per case with
``tracemalloc`` (NumPy and Python allocations; native decoder buffers are not traced). Prints
the outcome counts (decoded, refused by error type, defects: any exception that is not a
``CXRError``), the time and memory distribution, and the slowest and hungriest cases.

    python bench/bench_fuzz.py [--cases 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

import fuzz_cases  # noqa: E402
from cxr_core.errors import CXRError  # noqa: E402
from cxr_core.io.imaging import load_xray  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    outcomes: Counter = Counter()
    by_family: Counter = Counter()
    defects: list[str] = []
    times, peaks, labels = [], [], []
    start = time.perf_counter()
    for case in fuzz_cases.cases(args.cases, seed=args.seed):
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            load_xray(case.data)
            outcome = "decoded"
        except CXRError as err:
            outcome = f"refused: {type(err).__name__}"
        except Exception as exc:  # noqa: BLE001 - a defect is what this bench counts
            outcome = "DEFECT"
            defects.append(f"{case.label}: {type(exc).__name__}: {str(exc)[:160]}")
        times.append(time.perf_counter() - t0)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        labels.append(f"{case.label} ({len(case.data):,} bytes)")
        outcomes[outcome] += 1
        by_family[(case.family, "decoded" if outcome == "decoded" else "refused" if outcome != "DEFECT" else "defect")] += 1
    wall = time.perf_counter() - start
    times_ms, peaks_mb = np.array(times) * 1e3, np.array(peaks) / 2**20

    print(f"cases: {args.cases:,} in {wall:.1f} s ({args.cases / wall:,.0f} cases/s)")
    for outcome, n in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {outcome:<40} {n:>7,}  ({n / args.cases:.1%})")
    print("by family (decoded / refused / defect):")
    for family in fuzz_cases.FAMILIES:
        print(f"  {family:<10} {by_family[(family, 'decoded')]:>6,} / {by_family[(family, 'refused')]:>6,} "
              f"/ {by_family[(family, 'defect')]:>3,}")
    q = [50, 90, 99, 100]
    print("time per case, ms:       " + "  ".join(f"p{p}={v:.1f}" for p, v in zip(q, np.percentile(times_ms, q))))
    print("traced peak per case, MB: " + "  ".join(f"p{p}={v:.2f}" for p, v in zip(q, np.percentile(peaks_mb, q))))
    slow, big = int(np.argmax(times_ms)), int(np.argmax(peaks_mb))
    print(f"slowest case: {times_ms[slow]:.0f} ms, {labels[slow]}")
    print(f"largest peak: {peaks_mb[big]:.1f} MB, {labels[big]}")
    print(f"defects: {len(defects)}")
    for line in defects[:20]:
        print("  " + line)
    return 1 if defects else 0


if __name__ == "__main__":
    raise SystemExit(main())
