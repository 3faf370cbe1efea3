"""``demo-model``: rebuild the shipped demo model and the bundled samples from the cxr-real folder."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo-model", help="train the demo EfficientNetV2B0 (3 classes, from scratch) on cxr-real")
    p.add_argument("--source", type=Path, required=True, help="the cxr-real folder (with manifest.csv)")
    p.add_argument("--epochs", type=int, help="override the recipe's maximum epochs")
    p.add_argument("--input-size", type=int, help="override the recipe's input size")
    p.add_argument("--max-minutes", type=float, help="override the recipe's training time budget")
    p.add_argument("--crop-lungs", action="store_true", help="crop each film to its estimated lung fields (issue 16)")
    p.add_argument("--balance-by", metavar="COLUMN", help="weigh each value of this manifest column (e.g. source) "
                   "equally within a class")
    p.add_argument("--split", type=Path, metavar="CSV", help="reuse this split.csv (e.g. the shipped demo's) instead "
                   "of splitting by patient again")
    p.add_argument("--weights-dir", type=Path, help="register into this registry folder instead of weights/")
    p.add_argument("--samples", type=Path, help="also copy 12 test-split samples here (e.g. data/samples)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cxr_core.models.demo import CLASSES, build_demo, write_samples
    from cxr_core.training.evaluate import table2_row

    overrides = {k: v for k, v in (("epochs", args.epochs), ("input_size", args.input_size),
                                   ("max_minutes", args.max_minutes), ("balance_by", args.balance_by),
                                   ("crop_lungs", args.crop_lungs or None)) if v is not None}
    result = build_demo(args.source, log=lambda s: print(s, flush=True), split_csv=args.split,
                        weights_dir=args.weights_dir, **overrides)
    card = result.loaded.card
    if args.samples:
        entries = write_samples(result.records, args.samples)
        print(f"wrote {len(entries)} samples to {args.samples}")
    if "test" in card.metrics:
        print(table2_row(card.name, card.metrics["test"]))
    print(f"registered {card.name} ({', '.join(CLASSES)}) in {result.seconds / 60:.1f} min")
    return 0
