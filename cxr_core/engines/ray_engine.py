"""The archive engine on Ray: :class:`~cxr_core.engines.batch.BatchScorer` inside Ray Data ``map_batches``.

Each Ray actor loads the model once and scores batches of films (the same function as the local engine,
so the same rows); the driver streams the result batches into the same Parquet folder
(:class:`~cxr_core.engines.batch.ParquetStore`), skipping films already there (resume).

- ``address``: join a running cluster (``ray start --head`` on one machine, ``ray start --address HEAD:6379``
  on the others; every node needs this repository's ``cxr_core``, its requirements and the model registry at
  the same ``CXR_WEIGHTS_DIR``, and the films at the same paths). Without it, a local Ray is started.
- GPUs: when the cluster has GPUs each actor asks for one (TensorFlow then runs on it), else one CPU.
- Actors: at most one fewer than the CPUs (at least one). With as many actors as CPUs, Ray Data's own
  scheduling waits for a CPU that never frees ("backpressured"): measured on a 2-CPU machine, see
  ``shared/notes/engines.md``.

Ray is an optional dependency (about 590 MB with pyarrow and pandas): ``pip install -r requirements-scale.txt``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from cxr_core.engines.batch import (
    BatchScorer, BatchSpec, FilmEntry, ParquetStore, RunSummary, _flush, entry_table, pending,
)
from cxr_core.errors import CXRError

MISSING = ("Ray is not installed: install requirements-scale.txt for --engine ray "
           "(pip install -r requirements-scale.txt)")


class RayUnavailableError(CXRError):
    """``--engine ray`` without Ray installed, or a cluster that cannot be reached."""


def require_ray():
    """The ``ray`` module, or :class:`RayUnavailableError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra: pyarrow, pandas)
    except ImportError as exc:
        raise RayUnavailableError(f"{MISSING} ({exc})") from exc
    return ray


def _runtime_env() -> dict:
    """Environment every worker needs: the CXR_* settings and this repository on the import path."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k.startswith("CXR_") or k == "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": env}


def connect(address: str | None = None, *, num_cpus: int | None = None):
    """``ray.init`` once: to the cluster at ``address``, or a local Ray (``num_cpus`` logical CPUs)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs = {"include_dashboard": False, "log_to_driver": False, "runtime_env": _runtime_env()}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailableError(f"could not start or join Ray{f' at {address}' if address else ''}: {exc}") from exc
    return ray


def actor_plan(resources: dict, actors: int | None = None) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for a cluster's ``ray.cluster_resources()``.

    One GPU per actor when there are GPUs (as many actors as GPUs); otherwise one CPU each, leaving one
    CPU free for Ray Data's own tasks (the 2-CPU deadlock).

    Examples
    --------
    >>> actor_plan({"CPU": 2.0})
    (1, 1.0, 0.0)
    >>> actor_plan({"CPU": 16.0, "GPU": 2.0})
    (2, 1.0, 1.0)
    """
    cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    if gpus:
        most = gpus
    else:
        most = max(1, cpus - 1)
    n = max(1, min(actors or most, most))
    return n, 1.0, (1.0 if gpus else 0.0)


def run_ray(films: Sequence[FilmEntry], spec: BatchSpec, out: Path | str, *, address: str | None = None,
            num_cpus: int | None = None, actors: int | None = None, flush_rows: int = 512, progress=None) -> RunSummary:
    """Score ``films`` on Ray (a cluster at ``address`` or a local Ray), appending rows to the Parquet folder ``out``.

    The same rows as :func:`cxr_core.engines.batch.run_local`; films already in ``out`` are skipped.

    Raises
    ------
    RayUnavailableError
        Ray is not installed, or the cluster cannot be reached.
    """
    started = time.perf_counter()
    store = ParquetStore(out)
    todo, done = pending(films, store, spec)
    summary = RunSummary("ray", len(films), skipped_by_file=len(films) - len(todo))
    if not todo:
        summary.seconds = time.perf_counter() - started
        return summary
    ray = connect(address, num_cpus=num_cpus)
    n, cpus, gpus = actor_plan(ray.cluster_resources(), actors)
    summary.notes.append(f"{n} actor(s), {cpus:g} CPU and {gpus:g} GPU each")
    blocks = max(1, -(-len(todo) // spec.batch_size))
    ds = ray.data.from_arrow(entry_table(todo)).repartition(blocks)
    scored = ds.map_batches(
        BatchScorer, fn_constructor_kwargs={"spec": asdict(spec), "done": sorted(done)},
        batch_size=spec.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=n),
        num_cpus=cpus, num_gpus=gpus,
    )
    buffer: list = []
    for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        buffer.append(table)
        if sum(t.num_rows for t in buffer) >= flush_rows:
            _flush(store, buffer, summary)
        if progress is not None:
            progress(min(summary.written + sum(t.num_rows for t in buffer), len(todo)), len(todo))
    _flush(store, buffer, summary)
    summary.skipped_by_hash = len(todo) - summary.written
    summary.seconds = time.perf_counter() - started
    return summary


__all__ = ["MISSING", "RayUnavailableError", "require_ray", "connect", "actor_plan", "run_ray"]
