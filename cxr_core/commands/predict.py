"""``predict``: class probabilities for one or more X-ray files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cxr_core.errors import CXRError


def register(sub) -> None:
    p = sub.add_parser("predict", help="class probabilities for X-ray files (scores are not diagnoses)")
    p.add_argument("paths", nargs="+", help="PNG, JPEG, TIFF or DICOM files")
    p.add_argument("--model", required=True, help="registered model name (see `models`)")
    p.add_argument("--json", action="store_true", help="print one JSON object per input")
    p.add_argument("--out", type=Path, help="also write <stem>.json per input into this folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from cxr_core.imaging import load_xray
    from cxr_core.manifest import load_model
    from cxr_core.predict import predict_loaded
    from cxr_core.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()
    loaded = load_model(args.model)
    failed = 0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for path in args.paths:
        try:
            xray = load_xray(path)
        except CXRError as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        pred = predict_loaded(loaded, [xray])[0]
        record = {"file": str(path), "model": loaded.name, **pred.to_dict()}
        if args.out:
            (args.out / f"{Path(path).stem}.json").write_text(json.dumps(record, indent=2))
        if args.json:
            print(json.dumps(record))
        else:
            scores = ", ".join(f"{c} {p:.1%}" for c, p in record["probabilities"].items())
            print(f"{path}: {pred.predicted} (model scores: {scores})")
    return 2 if failed else 0
