"""Training data: class folders or a CSV manifest in, labelled records and a patient-disjoint split out.

Two layouts are read:

- a folder ``DIR/{train,val,test}/<class>/*`` (the study's layout) or ``DIR/<class>/*`` (unsplit);
- a CSV manifest with columns ``file,label[,patient_id][,split]`` (more columns are kept), file paths
  relative to the manifest. A folder holding ``manifest.csv`` is read through its manifest.

Class names are matched case-insensitively with the aliases of :data:`cxr_core.models.zoo.CLASS_ALIASES`.
Nothing here loads TensorFlow; :func:`load_inputs` decodes through :mod:`cxr_core.io.imaging` and
:mod:`cxr_core.models.preprocess`, the path inference uses.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cxr_core.errors import CXRError, DataError
from cxr_core.io.imaging import IMAGE_SUFFIXES
from cxr_core.models.zoo import CLASS_ALIASES, DEFAULT_CLASSES, ModelSpec, canonical_class

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class Record:
    """One labelled image.

    ``patient_id`` defaults to the file's stem (each image its own patient) when the data gives none;
    ``split`` is ``"train"``, ``"val"``, ``"test"`` or ``""`` (not yet split); ``extra`` keeps the
    manifest's other columns (source, licence, ...).
    """

    file: Path
    label: str
    patient_id: str
    split: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def source(self) -> str:
        return self.extra.get("source", "")


def known_classes(labels: Iterable[str], classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """Canonical classes present in ``labels``, in :data:`DEFAULT_CLASSES` order (unknown ones after, sorted)."""
    pool = tuple(classes) if classes else DEFAULT_CLASSES
    found = set()
    unknown = set()
    for label in labels:
        try:
            found.add(canonical_class(label, pool))
        except CXRError:
            unknown.add(label.strip())
    if classes:
        if unknown:
            raise DataError(f"labels {sorted(unknown)} match none of the classes {', '.join(pool)}")
        return tuple(c for c in pool if c in found)
    return tuple(c for c in pool if c in found) + tuple(sorted(unknown))


def _label(raw: str, classes: Sequence[str]) -> str:
    try:
        return canonical_class(raw, tuple(classes))
    except CXRError as exc:
        raise DataError(str(exc)) from None


def _split_name(raw: str, where: str) -> str:
    key = (raw or "").strip().lower()
    if not key:
        return ""
    if key not in SPLIT_ALIASES:
        raise DataError(f"split {raw!r} in {where} is not one of train, val, test")
    return SPLIT_ALIASES[key]


def read_manifest(path: Path | str, classes: Sequence[str] | None = None) -> list[Record]:
    """Records of a CSV manifest (``file,label[,patient_id][,split]``; paths relative to the manifest).

    Raises
    ------
    DataError
        Missing columns, a missing image, an unknown label or split.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"manifest {path} has no rows")
    missing = {"file", "label"} - set(rows[0])
    if missing:
        raise DataError(f"manifest {path} lacks column(s) {sorted(missing)}; it has {list(rows[0])}")
    classes = tuple(classes) if classes else known_classes([r["label"] for r in rows])
    records = []
    for i, row in enumerate(rows, start=2):
        file = Path(row["file"])
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            raise DataError(f"{path} line {i}: image {file} does not exist")
        extra = {k: v for k, v in row.items() if k not in ("file", "label", "patient_id", "split") and k is not None}
        records.append(Record(
            file=file, label=_label(row["label"], classes),
            patient_id=(row.get("patient_id") or "").strip() or file.stem,
            split=_split_name(row.get("split", ""), f"{path} line {i}"), extra=extra,
        ))
    return records


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_folder(folder: Path | str, classes: Sequence[str] | None = None) -> list[Record]:
    """Records of ``DIR/{train,val,test}/<class>/*`` or ``DIR/<class>/*`` (class folders matched with aliases)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    subdirs = _class_dirs(folder)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
    layout = [(SPLIT_ALIASES[d.name.lower()], c) for d in split_dirs for c in _class_dirs(d)] if split_dirs else [
        ("", c) for c in subdirs
    ]
    if not layout:
        raise DataError(f"{folder} has no class folders; expected DIR/<class>/* or DIR/{{train,val,test}}/<class>/*")
    classes = tuple(classes) if classes else known_classes([c.name for _, c in layout])
    records = []
    for split, cdir in layout:
        label = _label(cdir.name, classes)
        records.extend(Record(p, label, p.stem, split) for p in _images(cdir))
    if not records:
        raise DataError(f"{folder} has class folders but no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return records


def load_records(data: Path | str, classes: Sequence[str] | None = None) -> list[Record]:
    """Records from a manifest file, a folder with ``manifest.csv``, or class folders."""
    data = Path(data)
    if data.is_file():
        return read_manifest(data, classes)
    if (data / MANIFEST_NAME).is_file():
        return read_manifest(data / MANIFEST_NAME, classes)
    return scan_folder(data, classes)


def split_by_patient(
    records: Sequence[Record],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    *,
    seed: int = 0,
) -> list[Record]:
    """Assign train/val/test so that no patient has images on two sides.

    Patients are grouped by their most frequent label (stratification as far as patients allow),
    shuffled with ``seed``, and each patient goes to the side furthest below its share of that
    class's images. Existing ``split`` values are overwritten.

    Returns
    -------
    list of Record
        The same records, in the same order, with ``split`` set.
    """
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise DataError(f"split fractions must be 3 non-negative numbers, got {fractions}")
    share = np.asarray(fractions, dtype=float) / sum(fractions)
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_patient[rec.patient_id].append(i)
    strata: dict[str, list[str]] = defaultdict(list)
    for pid, idx in by_patient.items():
        label = Counter(records[i].label for i in idx).most_common(1)[0][0]
        strata[label].append(pid)
    rng = np.random.default_rng(seed)
    side_of: dict[str, str] = {}
    for label in sorted(strata):
        pids = sorted(strata[label])
        rng.shuffle(pids)
        # Larger patients first so the small ones fill the gaps (a stable, seeded order).
        pids.sort(key=lambda p: -len(by_patient[p]))
        total = sum(len(by_patient[p]) for p in pids)
        filled = np.zeros(3)
        for pid in pids:
            target = share * total
            relative_gap = np.where(target > 0, (target - filled) / np.maximum(target, 1e-9), -np.inf)
            side = int(np.argmax(relative_gap))
            side_of[pid] = SPLITS[side]
            filled[side] += len(by_patient[pid])
    return [replace(rec, split=side_of[rec.patient_id]) for rec in records]


def check_patient_disjoint(records: Sequence[Record]) -> None:
    """Raise :class:`DataError` when a patient has images on two sides of the split."""
    sides: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        sides[rec.patient_id].add(rec.split)
    shared = {p: sorted(s) for p, s in sides.items() if len(s) > 1}
    if shared:
        first = next(iter(shared))
        raise DataError(
            f"{len(shared)} patient(s) have images on two sides of the split (e.g. {first!r} in {shared[first]}); "
            "re-split with `split MANIFEST --by patient_id`"
        )


def by_split(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Records grouped by split (``""`` for unsplit ones)."""
    out: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        out[rec.split].append(rec)
    return dict(out)


def split_counts(records: Sequence[Record]) -> dict:
    """Images and patients per split, by class and by source (JSON-ready, for model cards)."""
    out = {}
    for split, recs in sorted(by_split(records).items(), key=lambda kv: (SPLITS + ("",)).index(kv[0])):
        out[split or "unsplit"] = {
            "images": len(recs),
            "patients": len({r.patient_id for r in recs}),
            "by_class": dict(sorted(Counter(r.label for r in recs).items())),
            "by_source": dict(sorted(Counter(r.source or "unknown" for r in recs).items())),
            "by_class_and_source": {
                f"{c} / {s}": n for (c, s), n in sorted(Counter((r.label, r.source or "unknown") for r in recs).items())
            },
        }
    return out


def write_split_csv(records: Sequence[Record], path: Path | str, *, root: Path | str | None = None) -> Path:
    """Write ``file,label,patient_id,split[,source]``; files relative to ``root`` when given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "patient_id", "split", "source"])
        for rec in records:
            file = rec.file
            if root is not None:
                try:
                    file = Path(file).resolve().relative_to(Path(root).resolve())
                except ValueError:
                    pass
            writer.writerow([file.as_posix(), rec.label, rec.patient_id, rec.split, rec.source])
    return path


def read_split_csv(path: Path | str) -> dict[str, str]:
    """``{file (as written): split}`` from a :func:`write_split_csv` file."""
    with Path(path).open(newline="") as fh:
        return {row["file"]: row["split"] for row in csv.DictReader(fh)}


def apply_split(records: Sequence[Record], split_of: dict[str, str], *, root: Path | str) -> list[Record]:
    """Set each record's split from a saved split (keys are files relative to ``root``)."""
    root = Path(root).resolve()
    out = []
    for rec in records:
        try:
            key = Path(rec.file).resolve().relative_to(root).as_posix()
        except ValueError:
            key = Path(rec.file).as_posix()
        out.append(replace(rec, split=split_of.get(key, "")))
    return out


def remap_labels(records: Sequence[Record], mapping: dict[str, str]) -> list[Record]:
    """Relabel records by ``{data label: model class}`` (keys matched case-insensitively)."""
    lower = {k.strip().lower(): v for k, v in mapping.items()}
    return [replace(r, label=lower.get(r.label.lower(), r.label)) for r in records]


def class_weights(labels: Sequence[int], n_classes: int) -> dict[int, float]:
    """Balanced class weights ``n / (k * count)`` (absent classes get weight 0)."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    n = counts.sum()
    present = (counts > 0).sum()
    return {i: float(n / (present * c)) if c else 0.0 for i, c in enumerate(counts)}


def load_inputs(records: Sequence[Record], spec: ModelSpec, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decode and prepare every image once: (N, S, S, 3) float32 network inputs and (N,) class indices.

    Uses :func:`cxr_core.io.imaging.load_xray` and :func:`cxr_core.models.preprocess.prepare`, so training sees
    the pixels that prediction sees.
    """
    from cxr_core.io.imaging import load_xray
    from cxr_core.models.preprocess import prepare

    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r.label for r in records} - set(index))
    if unknown:
        raise DataError(f"labels {unknown} are not among the model's classes {', '.join(classes)}")
    x = np.zeros((len(records), spec.input_size, spec.input_size, 3), np.float32)
    for i, rec in enumerate(records):
        x[i] = prepare(load_xray(rec.file).pixels, spec)
    y = np.array([index[r.label] for r in records], dtype=np.int64)
    return x, y


__all__ = [
    "Record", "SPLITS", "CLASS_ALIASES", "read_manifest", "scan_folder", "load_records", "split_by_patient",
    "check_patient_disjoint", "by_split", "split_counts", "write_split_csv", "read_split_csv", "apply_split",
    "remap_labels", "class_weights", "load_inputs", "known_classes",
]
