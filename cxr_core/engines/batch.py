"""Archive scoring: one per-batch function, run by the local engine or inside Ray Data, results in Parquet.

A whole archive (tens of thousands of films, a hospital's millions) is scored batch by batch by
:class:`BatchScorer`: films in (a table of ``file``, ``label``, ``patient_id``), one result row per film
out, keyed by the film's pixel SHA-256 (:attr:`cxr_core.io.imaging.XRay.sha256`). Each film takes the one
analysis path (:func:`cxr_core.analysis.analyse_films`: decode, screen, warn, predict, Grad-CAM), so a
refused film is a row with ``refused`` true and its reasons, never a score. ``mode="audit"`` adds the
dataset audit's region shares (outside the lungs, border, corners, markers; :mod:`cxr_core.audit`).

- :func:`run_local` calls the scorer in this process; :func:`cxr_core.engines.ray_engine.run_ray` calls the
  same class as a Ray Data ``map_batches`` actor on every worker of a cluster. Both write the same rows
  (:data:`SCHEMA`) through :class:`ParquetStore`.
- **Resume**: a rerun into the same Parquet folder skips every film already there: first by file (same
  path, size and modification time, without decoding), then, inside the batch, by pixel hash (a film
  moved or copied under another name). Rows are flushed every ``flush_rows`` films, so an interrupted run
  loses at most that many. A film that could not be read has no hash and is tried again on a rerun.

Model scores are not diagnoses; the rows are numbers for an audit or a study, not reports on patients.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cxr_core.errors import CXRError, DataError

MODES = ("predict", "audit")
#: Heatmap figures kept per film (the heatmap itself is not: 1 MB a film would not scale to an archive).
HEATMAP_STATS = ("heatmap_mean", "heatmap_peak_row", "heatmap_peak_col", "heatmap_hot_area")


def _regions() -> tuple[str, ...]:
    from cxr_core.audit.stats import REGIONS

    return tuple(REGIONS)


def schema():
    """The Parquet schema of a result row (the same for both engines and both modes; absent values are null)."""
    import pyarrow as pa

    fields = [
        ("film_sha256", pa.string()), ("file", pa.string()), ("file_size", pa.int64()),
        ("file_mtime_ns", pa.int64()), ("label", pa.string()), ("patient_id", pa.string()),
        ("model", pa.string()), ("mode", pa.string()), ("engine", pa.string()), ("refused", pa.bool_()),
        ("overridden", pa.bool_()),
        ("refusal", pa.string()), ("error", pa.string()), ("predicted", pa.string()),
        ("confidence", pa.float64()), ("classes", pa.list_(pa.string())), ("probabilities", pa.list_(pa.float64())),
        ("heatmap_method", pa.string()), ("heatmap_target", pa.string()), ("heatmap_all_zero", pa.bool_()),
        *((name, pa.float64()) for name in HEATMAP_STATS),
        ("lung_source", pa.string()), ("n_markers", pa.int64()),
        *((f"share_{r}", pa.float64()) for r in _regions()),
        *((f"area_{r}", pa.float64()) for r in _regions()),
    ]
    return pa.schema(fields)


@dataclass(frozen=True)
class BatchSpec:
    """What every worker needs to score a batch; plain values only, so Ray can ship it to a cluster.

    ``mode``: ``"predict"`` (scores, and heatmap figures when ``cam`` is a method) or ``"audit"`` (Grad-CAM
    and region shares; ``cam`` is ignored). ``mask_markers``: the audit's ``--mask-markers``.
    ``lung_masks``: a folder of expert lung masks (audit), visible from every worker.
    """

    model: str
    mode: str = "predict"
    cam: str = "none"
    allow_ood: bool = False
    mask_markers: bool = False
    lung_masks: str | None = None
    batch_size: int = 16
    keep_names: bool = False  # True: rows carry the file path as given (predict --keep-names), else its key

    def file_id(self, file: str) -> str:
        """What a row says of a film's file: the path with ``keep_names``, else ``path-`` and 16 hex of its
        SHA-256, so resuming still works and no file name (often a patient's name) leaves the machine."""
        if self.keep_names:
            return file
        return "path-" + hashlib.sha256(file.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def __post_init__(self):
        if self.mode not in MODES:
            raise CXRError(f"mode {self.mode!r} unknown; expected one of {', '.join(MODES)}")
        if self.batch_size < 1:
            raise CXRError(f"batch size must be at least 1, got {self.batch_size}")

    @property
    def method(self) -> str | None:
        """The heatmap method the batch runs (None: scores only)."""
        if self.mode == "audit":
            return "gradcam"
        return None if self.cam in (None, "none") else self.cam


@dataclass(frozen=True)
class FilmEntry:
    """One film to score: its path (as given), label and patient id (``""`` when unknown)."""

    file: str
    label: str = ""
    patient_id: str = ""
    file_size: int = -1
    file_mtime_ns: int = -1

    @classmethod
    def of(cls, file: Path | str, label: str = "", patient_id: str = "") -> "FilmEntry":
        try:
            st = os.stat(file)
            size, mtime = int(st.st_size), int(st.st_mtime_ns)
        except OSError:
            size, mtime = -1, -1
        return cls(str(file), label or "", patient_id or "", size, mtime)

    @property
    def stat_key(self) -> tuple[str, int, int]:
        return (self.file, self.file_size, self.file_mtime_ns)


def list_films(sources: Iterable[Path | str], limit: int | None = None) -> list[FilmEntry]:
    """The films of image files, manifest CSVs (``file,label[,patient_id]``), folders with ``manifest.csv``,
    class folders, or plain folders of images (unlabelled), in the order given.

    Raises
    ------
    DataError
        A source that does not exist, or a folder with no image.
    """
    from cxr_core.training.dataset import IMAGE_SUFFIXES, load_records

    films: list[FilmEntry] = []
    for source in sources:
        path = Path(source)
        if path.is_file() and path.suffix.lower() in {*IMAGE_SUFFIXES, ".dcm", ".dicom"}:
            films.append(FilmEntry.of(path))
            continue
        if not path.exists():
            raise DataError(f"{path} does not exist")
        try:
            films.extend(FilmEntry.of(r.file, r.label, r.patient_id if r.patient_id != Path(r.file).stem else "")
                         for r in load_records(path))
        except DataError:
            files = sorted(p for p in path.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else []
            if not files:
                raise
            films.extend(FilmEntry.of(p) for p in files)
    return films[:limit] if limit else films


# --------------------------------------------------------------------------------------------
# The per-batch function
# --------------------------------------------------------------------------------------------

def heatmap_stats(heatmap: np.ndarray) -> dict[str, float]:
    """Mean, peak position (fractions of the height and width) and the share of the area above 0.5.

    Examples
    --------
    >>> h = np.zeros((4, 8)); h[1, 6] = 1.0
    >>> heatmap_stats(h)
    {'heatmap_mean': 0.03125, 'heatmap_peak_row': 0.375, 'heatmap_peak_col': 0.8125, 'heatmap_hot_area': 0.03125}
    """
    heat = np.asarray(heatmap, np.float64)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return {"heatmap_mean": float(heat.mean()), "heatmap_peak_row": (row + 0.5) / heat.shape[0],
            "heatmap_peak_col": (col + 0.5) / heat.shape[1], "heatmap_hot_area": float((heat > 0.5).mean())}


def _row(entry: dict, spec: BatchSpec, model_name: str, engine: str, **values) -> dict:
    row = {name: None for name in schema().names}
    row.update(file=spec.file_id(entry["file"]), file_size=entry.get("file_size", -1), file_mtime_ns=entry.get("file_mtime_ns", -1),
               label=entry.get("label") or "", patient_id=entry.get("patient_id") or "", model=model_name,
               mode=spec.mode, engine=engine, refused=False, overridden=False, refusal="", error="")
    row.update(values)
    return row


class BatchScorer:
    """The per-batch function: a loaded model (once per worker) called on a table of films.

    ``scorer(table)`` takes a ``pyarrow.Table`` (or a dict of columns) with ``file`` and optionally ``label``,
    ``patient_id``, ``file_size``, ``file_mtime_ns``, and returns a ``pyarrow.Table`` of :func:`schema` rows,
    one per film except films whose hash is in ``done`` (already in the output: skipped, see
    :attr:`skipped`). Ray Data constructs it once per actor (``fn_constructor_kwargs``); :func:`run_local`
    once per run. :attr:`scored` counts the films that went through the model.
    """

    def __init__(self, spec: BatchSpec | dict, done: Sequence[str] = ()):
        from cxr_core.models.manifest import load_model
        from cxr_core.models.runtime import import_tensorflow_quietly

        self.spec = spec if isinstance(spec, BatchSpec) else BatchSpec(**spec)
        import_tensorflow_quietly()
        self.loaded = load_model(self.spec.model)
        self.engine = None
        if self.spec.method is not None:
            from cxr_core.analysis import cam_engine

            self.engine = cam_engine(self.loaded)  # a model without a trustworthy heatmap fails here, once
        from cxr_core.safety.screening import screener

        self.screener = screener(self.loaded)
        info = getattr(self.engine, "info", None)  # scores without a heatmap come from TensorFlow (analysis._predict)
        #: Which engine made the numbers: ``"OpenVINO, bfloat16"``, ``"TensorFlow, float32"`` (a column of every row).
        self.engine_label = info.label if info is not None else "TensorFlow, float32"
        self.done = set(done)
        self.mask_index = None
        if self.spec.mode == "audit" and self.spec.lung_masks:
            from cxr_core.models.lungs import index_masks

            self.mask_index = index_masks(self.spec.lung_masks)
        self.lung_estimator = None
        self.scored = 0
        self.skipped = 0

    def __call__(self, batch) -> "object":
        import pyarrow as pa

        entries = batch.to_pylist() if isinstance(batch, pa.Table) else _dict_rows(batch)
        rows = self.rows(entries)
        return pa.Table.from_pylist(rows, schema=schema())

    def rows(self, entries: Sequence[dict]) -> list[dict]:
        """Result rows of ``entries`` (dicts with ``file`` ...), in their order, films in ``done`` left out."""
        from cxr_core.audit import _prepare_one, AuditItem

        name = self.loaded.name
        prepared, out = [], {}
        for i, entry in enumerate(entries):
            p = _prepare_one(AuditItem(Path(entry["file"]), entry.get("label") or "", entry.get("patient_id") or ""),
                             self.mask_index, self.spec.mode == "audit" and self.spec.mask_markers)
            if p.error:
                out[i] = _row(entry, self.spec, name, self.engine_label, error=p.error)
            elif p.sha256 in self.done:
                self.skipped += 1
            else:
                self.done.add(p.sha256)  # the same film twice in one run is scored once
                prepared.append((i, p))
        if prepared:
            from cxr_core.analysis import analyse_films

            analyses = analyse_films(self.loaded, [p.xray for _, p in prepared], method=self.spec.method,
                                     allow_ood=self.spec.allow_ood, screener=self.screener, engine=self.engine,
                                     model_pixels=[p.model_pixels for _, p in prepared],
                                     batch_size=self.spec.batch_size)
            self.scored += sum(a.analysed for a in analyses)
            audit = self.spec.mode == "audit"
            need = [p for (_, p), a in zip(prepared, analyses) if audit and a.analysed and p.lungs is None]
            if need:
                from cxr_core.models.lungs import LungEstimator

                if self.lung_estimator is None:
                    self.lung_estimator = LungEstimator.load()
                for p, lungs in zip(need, self.lung_estimator.estimate([p.pixels for p in need])):
                    p.lungs, p.lung_source = lungs, "estimate"
            for (i, p), a in zip(prepared, analyses):
                out[i] = self._analysis_row(entries[i], p, a, audit)
        return [out[i] for i in sorted(out)]

    def _analysis_row(self, entry: dict, p, a, audit: bool) -> dict:
        values: dict = {"film_sha256": p.sha256, "refused": a.refused, "overridden": a.overridden,
                        "refusal": "; ".join(a.reasons) if not a.screening.ok else ""}
        if a.analysed:
            pred = a.prediction
            values.update(predicted=pred.predicted, confidence=float(pred.confidence), classes=list(pred.classes),
                          probabilities=[float(v) for v in np.asarray(pred.probabilities).ravel()])
        if a.cam is not None:
            values.update(heatmap_method=a.cam.method, heatmap_target=str(a.cam.target),
                          heatmap_all_zero=bool(a.cam.all_zero), **heatmap_stats(a.cam.heatmap))
            if audit:
                from cxr_core.audit import image_regions, region_areas, region_shares

                regions = image_regions(p.pixels.shape, p.lungs, p.markers)
                values.update({f"share_{k}": v for k, v in region_shares(a.cam.heatmap, regions).items()})
                values.update({f"area_{k}": v for k, v in region_areas(regions).items()})
                values.update(lung_source=p.lung_source, n_markers=len(p.markers))
        elif a.analysed and a.cam_error:
            values["error"] = f"no heatmap: {a.cam_error}"
        return _row(entry, self.spec, self.loaded.name, self.engine_label, **values)


def _dict_rows(batch: dict) -> list[dict]:
    """A dict of equal-length columns (numpy or lists) as a list of row dicts with plain Python values."""
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: (batch[k][i].item() if hasattr(batch[k][i], "item") else batch[k][i]) for k in keys} for i in range(n)]


# --------------------------------------------------------------------------------------------
# Output: a folder of Parquet parts
# --------------------------------------------------------------------------------------------

class ParquetStore:
    """A folder of Parquet part files holding :func:`schema` rows; appended to, never rewritten.

    Each :meth:`append` writes a new ``part-*.parquet`` (to a temporary name, then renamed), so a crash
    leaves only whole parts. :meth:`read` gives every row, the latest per film.
    """

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise DataError(f"--parquet {self.folder} is a file; give a folder (the results are Parquet parts)")

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def append(self, table) -> Path | None:
        import pyarrow.parquet as pq

        if table.num_rows == 0:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(table.cast(schema()), tmp)
        os.replace(tmp, self.folder / name)
        return self.folder / name

    def read(self):
        """Every row (a ``pyarrow.Table``), one per film: the latest row of a hash, the latest error of a file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = self.parts()
        if not parts:
            return schema().empty_table()
        table = pa.concat_tables([pq.read_table(p, schema=schema()) for p in parts])
        keep: dict = {}
        for i, (sha, file) in enumerate(zip(table.column("film_sha256").to_pylist(), table.column("file").to_pylist())):
            keep[sha or f"error:{file}"] = i
        return table.take(sorted(keep.values()))

    def done(self, model: str, mode: str) -> tuple[set[str], set[tuple[str, int, int]]]:
        """(hashes, (file, size, mtime) keys) of films already scored by ``model`` in ``mode`` (not errors).

        Raises
        ------
        DataError
            The folder holds another model's or mode's rows (one folder, one model and mode).
        """
        table = self.read()
        if table.num_rows == 0:
            return set(), set()
        others = {(m, d) for m, d in zip(table.column("model").to_pylist(), table.column("mode").to_pylist())}
        if others != {(model, mode)}:
            found = ", ".join(f"{m} ({d})" for m, d in sorted(others))
            raise DataError(f"{self.folder} holds results of {found}, not {model} ({mode}); give another --parquet "
                            "folder")
        rows = table.select(["film_sha256", "file", "file_size", "file_mtime_ns"]).to_pylist()
        good = [r for r in rows if r["film_sha256"]]
        return {r["film_sha256"] for r in good}, {(r["file"], r["file_size"], r["file_mtime_ns"]) for r in good}


@dataclass
class RunSummary:
    """What one engine run did: films listed, skipped as already done (by file, by hash), scored, refused,
    unreadable, and the wall time."""

    engine: str
    listed: int
    skipped_by_file: int = 0
    skipped_by_hash: int = 0
    written: int = 0
    scored: int = 0
    refused: int = 0
    errors: int = 0
    seconds: float = 0.0
    notes: list = field(default_factory=list)

    def line(self) -> str:
        skipped = self.skipped_by_file + self.skipped_by_hash
        return (f"{self.engine} engine: {self.listed} film(s) listed, {skipped} already in the results (skipped), "
                f"{self.scored} scored, {self.refused} refused as not a frontal chest X-ray, {self.errors} unreadable; "
                f"{self.seconds:.1f} s")

    def to_dict(self) -> dict:
        return asdict(self)


def pending(films: Sequence[FilmEntry], store: ParquetStore, spec: BatchSpec) -> tuple[list[FilmEntry], set[str]]:
    """(films still to score, hashes already done): the resume step both engines share."""
    hashes, stat_keys = store.done(_model_name(spec), spec.mode)
    return [f for f in films if (spec.file_id(f.file), f.file_size, f.file_mtime_ns) not in stat_keys], hashes


def _model_name(spec: BatchSpec) -> str:
    """The registered name (a card's name is the folder's name; checked by load_model)."""
    return spec.model


def count_rows(table, summary: RunSummary) -> None:
    """Add a written table's films to ``summary``."""
    rows = table.select(["refused", "error", "predicted"]).to_pylist()
    summary.written += len(rows)
    summary.refused += sum(bool(r["refused"]) for r in rows)
    summary.errors += sum(bool(r["error"]) and r["predicted"] is None and not r["refused"] for r in rows)
    summary.scored += sum(r["predicted"] is not None for r in rows)


def entry_table(films: Sequence[FilmEntry]):
    """The input table of a batch (what Ray Data blocks hold too)."""
    import pyarrow as pa

    return pa.Table.from_pylist([asdict(f) for f in films], schema=pa.schema([
        ("file", pa.string()), ("label", pa.string()), ("patient_id", pa.string()),
        ("file_size", pa.int64()), ("file_mtime_ns", pa.int64())]))


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def run_local(films: Sequence[FilmEntry], spec: BatchSpec, out: Path | str, *, flush_rows: int = 512,
              progress=None, scorer: BatchScorer | None = None) -> RunSummary:
    """Score ``films`` in this process, batch by batch, appending rows to the Parquet folder ``out``.

    Films already in ``out`` are skipped (resume). ``progress(done, total)`` is called after each batch.
    """
    started = time.perf_counter()
    store = ParquetStore(out)
    todo, done = pending(films, store, spec)
    summary = RunSummary("local", len(films), skipped_by_file=len(films) - len(todo))
    if todo:
        scorer = scorer or BatchScorer(spec, done)
        scorer.done |= done
        before = scorer.skipped
        buffer = []
        for n, chunk in enumerate(_chunks(todo, spec.batch_size), start=1):
            buffer.append(scorer(entry_table(chunk)))
            if sum(t.num_rows for t in buffer) >= flush_rows:
                _flush(store, buffer, summary)
            if progress is not None:
                progress(min(n * spec.batch_size, len(todo)), len(todo))
        _flush(store, buffer, summary)
        summary.skipped_by_hash = scorer.skipped - before
    summary.seconds = time.perf_counter() - started
    return summary


def _flush(store: ParquetStore, buffer: list, summary: RunSummary) -> None:
    import pyarrow as pa

    if buffer:
        table = pa.concat_tables(buffer)
        store.append(table)
        count_rows(table, summary)
        buffer.clear()



# --------------------------------------------------------------------------------------------
# Command line: `predict ... --parquet OUT` and `audit ... --parquet OUT`, with --engine local|ray
# --------------------------------------------------------------------------------------------

ENGINES = ("local", "ray")


def add_arguments(parser) -> None:
    """``--engine``, ``--address``, ``--parquet``, ``--actors`` on a ``predict`` or ``audit`` parser."""
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this process; ray: Ray Data actors on a local Ray or the cluster at --address "
                             "(install requirements-scale.txt for --engine ray); both need --parquet for an archive")
    parser.add_argument("--address", help="Ray cluster to join (e.g. HEAD:6379 or ray://HEAD:10001); "
                        "default: start a local Ray")
    parser.add_argument("--parquet", type=Path, metavar="OUT",
                        help="score a whole archive into this folder of Parquet files, one row per film keyed by "
                             "its pixel SHA-256; a rerun skips films already there")
    parser.add_argument("--actors", type=int, help="Ray actors (default: one per GPU, else CPUs minus one)")


def wants_archive(args) -> bool:
    """Whether a ``predict``/``audit`` call goes to the archive engines (``--parquet`` or ``--engine ray``).

    Raises
    ------
    CXRError
        ``--engine ray`` or ``--address`` without ``--parquet``.
    """
    engine, parquet = getattr(args, "engine", "local"), getattr(args, "parquet", None)
    if parquet is None and (engine == "ray" or getattr(args, "address", None)):
        raise CXRError("--engine ray and --address write their results as Parquet: add --parquet OUT (a folder)")
    if getattr(args, "address", None) and engine != "ray":
        raise CXRError("--address only applies with --engine ray")
    return parquet is not None


def run_cli(args, spec: BatchSpec, sources: Sequence[Path | str], *, limit: int | None = None, stream=None) -> int:
    """Run ``spec`` on the films of ``sources`` with ``args.engine`` into ``args.parquet``; print a summary.

    Exit code 0, or 2 when a film was refused or unreadable (like ``predict``).
    """
    import sys

    stream = stream or sys.stdout
    if getattr(args, "actors", None) is not None and args.actors < 1:
        raise CXRError(f"--actors must be at least 1, got {args.actors}")
    films = list_films(sources, limit)
    if args.engine == "ray":
        from cxr_core.engines.ray_engine import require_ray, run_ray

        require_ray()  # the install hint before any model is loaded
        summary = run_ray(films, spec, args.parquet, address=args.address, actors=args.actors)
    else:
        summary = run_local(films, spec, args.parquet)
    print(summary.line(), file=stream)
    for note in summary.notes:
        print(f"  {note}", file=stream)
    print(f"Parquet results in {args.parquet} (model scores are not diagnoses)", file=stream)
    return 2 if summary.refused or summary.errors else 0


__all__ = ["MODES", "ENGINES", "HEATMAP_STATS", "BatchSpec", "FilmEntry", "BatchScorer", "ParquetStore", "RunSummary",
           "schema", "list_films", "heatmap_stats", "pending", "entry_table", "run_local", "add_arguments",
           "wants_archive", "run_cli"]
