"""``train``: fine-tune (or train from scratch) a zoo architecture and register it with its card."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on DIR/{train,val,test}/<class>/* or a CSV manifest")
    p.add_argument("--arch", required=True, help="resnet50, vgg16, xception or efficientnetv2b0")
    p.add_argument("--data", required=True, type=Path, help="class folders, or a CSV manifest file,label[,patient_id][,split]")
    p.add_argument("--name", required=True, help="registry name: writes weights/NAME/model.keras and card.json")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--trainable-layers", help="fine-tune the last N base layers, or 'all' (default: the zoo's)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--imagenet-weights", type=Path, metavar="PATH", help="local no-top ImageNet weights file")
    weights.add_argument("--no-imagenet", action="store_true", help="train from scratch (random weights)")
    p.add_argument("--tune", type=int, default=0, metavar="TRIALS", help="keras-tuner random search with TRIALS trials")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, help="square input side (default: the architecture's)")
    p.add_argument("--classes", help="comma-separated output classes in order (default: those found in the data)")
    p.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this much training time")
    p.add_argument("--no-augment", action="store_true", help="no rotation/shift/zoom/contrast augmentation")
    p.add_argument("--mask-markers", action="store_true",
                   help="inpaint burned-in markers and black out the border before the network, in training "
                        "and (recorded in the card) in every later prediction")
    p.add_argument("--crop-lungs", action="store_true",
                   help="crop each film to its estimated lung fields (lung U-Net box plus a margin) before the "
                        "network, in training and (recorded in the card) in every later prediction")
    p.add_argument("--balance-by", default="", metavar="COLUMN",
                   help="a manifest column (e.g. source): within each class every value of it weighs the same")
    p.set_defaults(func=run)


def run(args) -> int:
    from cxr_core.training.dataset import load_records
    from cxr_core.training.evaluate import table2_row
    from cxr_core.training.train import TrainConfig, train
    from cxr_core.models.zoo import canonical_class, get_spec, trainable_layers

    spec = get_spec(args.arch)
    classes = tuple(canonical_class(c) for c in args.classes.split(",")) if args.classes else None
    records = load_records(args.data, classes)
    weights = None if args.no_imagenet else (str(args.imagenet_weights) if args.imagenet_weights else "imagenet")
    config = TrainConfig(
        arch=spec.arch, name=args.name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        trainable_layers=trainable_layers(args.trainable_layers), weights=weights, input_size=args.input_size,
        seed=args.seed, classes=classes, augment=not args.no_augment, progress=sys.stdout.isatty(),
        max_minutes=args.max_minutes, tune_trials=args.tune, mask_markers=args.mask_markers,
        crop_lungs=args.crop_lungs, balance_by=args.balance_by,
    )
    root = args.data if args.data.is_dir() else args.data.parent
    result = train(records, config, data_root=root, log=lambda s: print(s, flush=True))
    card = result.loaded.card
    if "test" in card.metrics:
        print(table2_row(card.name, card.metrics["test"]))
    print(f"registered {card.name} in {result.seconds / 60:.1f} min")
    return 0
