"""``calibrate``: fit a registered model's temperature and its out-of-distribution detector.

The fit is printed; ``--record`` stores it (the temperature and ``ood`` entry in the card, the detector as
``ood.npz`` beside the model). Without it the registry, tracked files for shipped models, is left untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

from cxr_core.errors import DataError


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit temperature scaling on the validation split (ECE, Brier, NLL before/after on the test split) "
             "and the detector that refuses inputs unlike the training chest films",
    )
    p.add_argument("--model", required=True, help="registered model name (see `models`)")
    p.add_argument("--data", required=True, type=Path,
                   help="the model's data: class folders DIR/{train,val,test}/<class>/*, or a CSV manifest; "
                        "without a split column the model's own split.csv is applied")
    p.add_argument("--split", default="val", help="side the temperature and the refusal threshold are fitted on "
                                                  "(default val)")
    p.add_argument("--report-split", default="test", help="side the before/after numbers are measured on "
                                                          "(default test; the fitting side when it is absent)")
    p.add_argument("--no-ood", action="store_true", help="fit the temperature only")
    p.add_argument("--ood-features", help="'lungseg' (the lung U-Net's bottleneck; default) or a layer of the "
                                          "classifier (e.g. pool, hidden_1)")
    p.add_argument("--ood-method", choices=("knn", "mahalanobis"), help="feature distance (default knn)")
    p.add_argument("--ood-k", type=int, help="k-th nearest training film (knn; default 3)")
    p.add_argument("--ood-percentile", type=float, help="threshold = this percentile of the training films' "
                                                        "patient-grouped cross-fitted scores (default 99)")
    p.add_argument("--json", action="store_true", help="print the calibration and ood entries as JSON")
    p.add_argument("--record", action="store_true",
                   help="store the fit: temperature and ood entry in weights/NAME/card.json, detector in ood.npz "
                        "(predict and the app then use them)")
    p.set_defaults(func=run)


def _sides(args, loaded) -> dict:
    """Records of the data grouped by split, the model's own split.csv applied when the data has none."""
    from cxr_core.training.dataset import apply_split, by_split, load_records, read_split_csv
    from cxr_core.training.evaluate import match_classes
    from cxr_core.models.manifest import model_folder
    from cxr_core.training.train import SPLIT_FILE

    records = load_records(args.data)
    to_class = match_classes([r.label for r in records], loaded.card.classes)
    split_file = model_folder(loaded.name) / SPLIT_FILE
    if all(not r.split for r in records) and split_file.is_file():
        root = args.data if args.data.is_dir() else args.data.parent
        records = apply_split(records, read_split_csv(split_file), root=root)
    sides = by_split(records)
    if not sides.get(args.split):
        raise DataError(f"no images on the {args.split!r} side of the split in {args.data} (sides found: "
                        f"{', '.join(sorted(s or 'unsplit' for s in sides))}); calibration needs held-out images "
                        f"the model did not train on")
    return sides, to_class


def run(args) -> int:
    import os
    import shutil
    import tempfile

    import numpy as np

    from cxr_core.safety import screening
    from cxr_core.training.evaluate import predict_records
    from cxr_core.models.manifest import CARD_FILE, load_model, model_folder, write_card
    from cxr_core.models.runtime import import_tensorflow_quietly
    from cxr_core.training.train import after_training

    import_tensorflow_quietly()
    loaded = load_model(args.model)
    sides, to_class = _sides(args, loaded)
    classes = list(loaded.card.classes)

    def labelled(side: str):
        recs = sides.get(side, [])
        return predict_records(loaded, recs), np.array([classes.index(to_class[r.label]) for r in recs], np.int64)

    fit_pair = labelled(args.split)
    report_pair = labelled(args.report_split) if args.report_split != args.split and sides.get(args.report_split) \
        else None
    calibration = after_training(loaded, fit_pair, report_pair)
    calibration["fitted_on"] = f"{args.split} split ({len(fit_pair[1])} images)"
    calibration["reported_on"] = (f"{args.report_split} split" if report_pair is not None
                                  else f"{args.split} split (no {args.report_split} split)")
    folder = model_folder(loaded.name)
    ood = None
    with tempfile.TemporaryDirectory(prefix="cxr-calibrate-") as scratch:
        if not args.no_ood:  # fitted into a scratch registry; copied beside the model only with --record
            train = sides.get("train", [])
            if len(train) < 2:
                raise DataError(f"{len(train)} image(s) on the 'train' side in {args.data}: the OOD detector is "
                                "fitted on the model's training films (or pass --no-ood)")
            options = {k: v for k, v in (("features", args.ood_features), ("method", args.ood_method),
                                         ("k", args.ood_k), ("percentile", args.ood_percentile)) if v is not None}
            (Path(scratch) / loaded.name).mkdir()
            ood = screening.fit_model_detector(
                loaded, [r.file for r in train], [r.patient_id for r in train],
                val_files=[r.file for r in sides[args.split]], weights_dir=scratch, **options)
        if args.record:
            card = loaded.card
            card.calibration = calibration
            if ood is not None:
                staged = folder / ("tmp-" + ood["file"])
                shutil.copyfile(Path(scratch) / loaded.name / ood["file"], staged)
                os.replace(staged, folder / ood["file"])
                card.extra["ood"] = ood
            write_card(folder, card)
    if args.json:
        print(json.dumps({"model": loaded.name, "calibration": calibration, "ood": ood, "recorded": args.record},
                         indent=2))
        return 0
    c = calibration
    print(f"{loaded.name}: temperature {c['temperature']:.3f} fitted on the {calibration['fitted_on']}")
    print(f"  on the {c['reported_on']} ({c['n']} images), before -> after scaling: ECE {c['ece_before']:.3f} -> "
          f"{c['ece_after']:.3f}, Brier {c['brier_before']:.3f} -> {c['brier_after']:.3f}, "
          f"NLL {c['nll_before']:.3f} -> {c['nll_after']:.3f}")
    if ood is not None:
        what = f"{ood['method']}" + (f" (k={ood['k']})" if ood["method"] == "knn" else "")
        print(f"  OOD detector: {what} on {ood['features']} features ({ood['dim']}-d) of {ood['n_fit']} training "
              f"films, threshold {ood['threshold']:.4g} ({ood['threshold_rule']}); refuses "
              f"{ood['val_refusal_rate']:.1%} of the {ood['n_val']} {args.split} films"
              + (f"; saved {folder / ood['file']}" if args.record else ""))
    if args.record:
        print(f"card updated: {folder / CARD_FILE}")
    else:
        print("not recorded: the model's card and files are unchanged (add --record to store this fit)")
    return 0
