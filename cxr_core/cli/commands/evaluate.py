"""``evaluate``: a registered model's metrics on labelled data, with 95% bootstrap intervals.

The metrics are printed (and with ``--json FILE`` written there); the model card, a tracked file for
shipped models, is changed only when ``--record`` asks for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxr_core.errors import DataError


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy, loss, AUC, F1, recall, precision (with 95%% intervals) on labelled data")
    p.add_argument("--model", required=True, help="registered model name (see `models`)")
    p.add_argument("--data", required=True, type=Path, help="class folders or a CSV manifest")
    p.add_argument("--split", help="which side to evaluate: test (default when a split is known), val, train or all")
    p.add_argument("--map", help="map data labels to the model's classes: covid=COVID-19,healthy=Normal")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, help="bootstrap seed (default: the model's training seed, else 0)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print the metrics as JSON, or with FILE write them there (and print the table)")
    p.add_argument("--record", action="store_true",
                   help="also add the metrics to the model's card (weights/NAME/card.json), keyed by data set")
    p.add_argument("--subgroups", metavar="COL,...",
                   help="manifest columns to report per subgroup and probe for confounds (default: every extra column "
                        "with 2-12 values); 'none' skips them")
    p.add_argument("--no-save", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.set_defaults(func=run)


def _mapping(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise DataError(f"--map must look like covid=COVID-19,healthy=Normal, got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def run(args) -> int:
    from cxr_core.training.dataset import apply_split, load_records, read_split_csv
    from cxr_core.training.evaluate import evaluate_model, match_classes, subgroups_and_confounds, table2_row
    from cxr_core.models.manifest import CARD_FILE, load_model, model_folder, write_card
    from cxr_core.models.runtime import import_tensorflow_quietly
    from cxr_core.training.train import SPLIT_FILE

    if args.record and args.no_save:
        raise DataError("--record and --no-save contradict each other; give one")
    import_tensorflow_quietly()
    loaded = load_model(args.model)
    mapping = _mapping(args.map)
    records = load_records(args.data)
    match_classes([r.label for r in records], loaded.card.classes, mapping)  # refuse before predicting
    folder = model_folder(args.model)
    own_split = False
    if all(not r.split for r in records) and (folder / SPLIT_FILE).is_file() and args.split != "all":
        root = args.data if args.data.is_dir() else args.data.parent
        records = apply_split(records, read_split_csv(folder / SPLIT_FILE), root=root)
        own_split = any(r.split for r in records)
    side = args.split or ("test" if any(r.split == "test" for r in records) else "all")
    if side != "all":
        records = [r for r in records if r.split == side]
        if not records:
            raise DataError(f"no images on the {side!r} side of the split in {args.data}")
    seed = args.seed if args.seed is not None else int(loaded.card.training_data.get("recipe", {}).get("seed", 0))
    metrics = evaluate_model(loaded, records, n_boot=args.n_boot, seed=seed, mapping=mapping)
    key = side if own_split else f"{args.data.name}/{side}"
    result = {"model": loaded.name, "data": str(args.data), "split": side, "metrics": metrics}
    wanted = [c.strip() for c in (args.subgroups or "").split(",") if c.strip()]
    if wanted != ["none"]:
        result.update(subgroups_and_confounds(loaded, records, mapping=mapping, wanted=wanted or None,
                                              n_boot=args.n_boot, seed=seed))
    if args.json == "-":
        print(json.dumps(result, indent=2))
    else:
        if args.json:
            try:
                Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
            except OSError as exc:
                raise DataError(f"cannot write the metrics to {args.json}: {exc.strerror or exc}") from exc
        classes = loaded.card.classes
        print(f"{loaded.name} on {args.data} ({side}, {metrics['n']} images); 95% bootstrap intervals in brackets")
        print(table2_row(loaded.name, metrics))
        for cls in classes:
            pc, ci = metrics["per_class"][cls], metrics["ci95"]["per_class"][cls]
            print(f"  {cls:12s} n={pc['support']:4d}  " + "  ".join(
                f"{m} {pc[m]:.3f}" + (f" [{ci[m][0]:.3f}, {ci[m][1]:.3f}]" if ci[m] else "") if pc[m] is not None
                else f"{m} n/a" for m in ("precision", "recall", "f1", "auc")))
        print("  confusion (rows true, columns predicted: " + ", ".join(classes) + ")")
        for cls, row in zip(classes, metrics["confusion_matrix"]):
            print(f"  {cls:12s} " + " ".join(f"{v:5d}" for v in row))
        from cxr_core.audit.report import confound_lines, confound_rows

        for row in confound_rows(result):
            v, gap = row["Cramér's V with the label"], row["accuracy gap within a class"]
            print(f"  subgroup column {row['column']}: feature AUROC {row['feature AUROC']}, Cramér's V {v}, "
                  f"accuracy gap within a class {gap}, flagged {row['flagged']}")
        for line in confound_lines(result):
            print(line)
        if own_split and side == "test" and "test" in loaded.card.metrics:
            same = _comparable(loaded.card.metrics["test"]) == _comparable(metrics)
            print("matches the card's test metrics" if same else "differs from the card's test metrics")
        if args.json:
            print(f"metrics written to {args.json}")
    if args.record:
        card = loaded.card
        card.metrics = {**card.metrics, key: metrics}
        write_card(folder, card)
        print(f"recorded as {key!r} in {folder / CARD_FILE}", file=sys.stderr if args.json == "-" else sys.stdout)
    elif args.json != "-":
        print("not recorded: the model's card is unchanged (add --record to keep these numbers in it)")
    return 0


def _comparable(m: dict) -> dict:
    return {k: m.get(k) for k in ("accuracy", "loss", "auc", "f1", "recall", "precision", "confusion_matrix", "ci95")}
