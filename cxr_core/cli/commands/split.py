"""``split``: a patient-disjoint train/val/test split of a CSV manifest."""

from __future__ import annotations

import csv
from pathlib import Path

from cxr_core.errors import DataError


def register(sub) -> None:
    p = sub.add_parser("split", help="add a patient-disjoint train/val/test split column to a CSV manifest")
    p.add_argument("manifest", type=Path, help="CSV with file,label[,patient_id] columns")
    p.add_argument("--by", default="patient_id", help="column that identifies a patient (default patient_id)")
    p.add_argument("--fractions", default="0.7,0.15,0.15", help="train,val,test shares (default 0.7,0.15,0.15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output CSV (default: <manifest stem>.split.csv beside it)")
    p.set_defaults(func=run)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise DataError(f"--fractions must be three comma-separated numbers like 0.7,0.15,0.15, got {text!r}")
    return values  # type: ignore[return-value]


def run(args) -> int:
    from cxr_core.training.dataset import Record, check_patient_disjoint, split_by_patient, split_counts

    path = args.manifest
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows, columns = list(reader), list(reader.fieldnames or [])
    missing = {"file", "label", args.by} - set(columns)
    if missing:
        raise DataError(f"{path} lacks column(s) {sorted(missing)}; it has {columns}")
    blank = sum(1 for r in rows if not (r[args.by] or "").strip())
    records = [Record(Path(r["file"]), r["label"].strip(), (r[args.by] or "").strip() or f"row{i}", "",
                      {"source": r.get("source", "")}) for i, r in enumerate(rows)]
    records = split_by_patient(records, _fractions(args.fractions), seed=args.seed)
    check_patient_disjoint(records)
    out = args.out or path.with_name(path.stem + ".split.csv")
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns + ([] if "split" in columns else ["split"]))
        writer.writeheader()
        for row, rec in zip(rows, records):
            writer.writerow({**row, "split": rec.split})
    counts = split_counts(records)
    for side, c in counts.items():
        print(f"{side:5s} {c['images']:6d} images  {c['patients']:6d} patients  "
              + ", ".join(f"{k} {v}" for k, v in c["by_class"].items()))
    if blank:
        print(f"note: {blank} row(s) have no {args.by}; each was treated as its own patient")
    print(f"wrote {out} (no {args.by} on two sides)")
    return 0
