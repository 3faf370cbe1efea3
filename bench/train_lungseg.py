"""Train the audit's lung-field U-Net on the shared set's expert lung masks and write weights/lungseg/.

Usage: python bench/train_lungseg.py [--source ../shared/data/cxr-real] [--epochs 40]

Patients are split 80/20 (seeded); the model saved is the one trained on the 80 %, so the Dice
written to ``weights/lungseg/lungseg.json`` is measured on patients it never saw.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxr_core.io.imaging import load_xray  # noqa: E402
from cxr_core.models.lungs import LUNG_CARD_FILE, INPUT_SIZE, LUNGSEG_DIR, LUNG_MODEL_FILE, LungEstimator, build_unet, dice, read_mask, train_unet  # noqa: E402
from cxr_core.models.runtime import import_tensorflow_quietly  # noqa: E402


def pairs(source: Path) -> list[tuple[Path, Path, str]]:
    """(image, mask, patient id) for every manifest row with a lung mask."""
    out = []
    with (source / "manifest.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            masks = [a for a in row["annotation_files"].split(";") if "lung_masks" in a]
            if masks:
                out.append((source / row["file"], source / masks[0], row["patient_id"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/cxr-real")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=LUNGSEG_DIR)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import_tensorflow_quietly()
    rows = pairs(args.source)
    patients = sorted({p for _, _, p in rows})
    rng = np.random.default_rng(args.seed)
    held_patients = set(rng.choice(patients, size=max(1, round(0.2 * len(patients))), replace=False))
    train = [r for r in rows if r[2] not in held_patients]
    held = [r for r in rows if r[2] in held_patients]

    def load(subset):
        imgs = [load_xray(i).pixels for i, _, _ in subset]
        return imgs, [read_mask(m, im.shape) for (_, m, _), im in zip(subset, imgs)]

    x_tr, y_tr = load(train)
    x_te, y_te = load(held)
    print(f"{len(train)} training masks ({len(patients) - len(held_patients)} patients), "
          f"{len(held)} held out ({len(held_patients)} patients)")
    t0 = time.perf_counter()
    model = train_unet(x_tr, y_tr, epochs=args.epochs, steps_per_epoch=args.steps, seed=args.seed)
    seconds = time.perf_counter() - t0
    est = LungEstimator(model, {})
    scores = {Path(i).stem: dice(p, m) for (i, _, _), p, m in zip(held, est.estimate(x_te), y_te)}
    train_scores = [dice(p, m) for p, m in zip(est.estimate(x_tr), y_tr)]
    args.out.mkdir(parents=True, exist_ok=True)
    bare = build_unet(INPUT_SIZE)  # no optimizer state in the shipped file
    bare.set_weights(model.get_weights())
    bare.save(args.out / LUNG_MODEL_FILE)
    card = {
        "what": "lung fields (both lungs, behind the heart included) for the audit; not a diagnostic model",
        "input_size": INPUT_SIZE,
        "trained_on": "V7 Labs expert lung masks of the shared cxr-real set (Hannover CC BY 3.0, ieee8023 CC BY 4.0)",
        "train_images": len(train), "train_patients": len(patients) - len(held_patients),
        "held_out_images": len(held), "held_out_patients": len(held_patients),
        "held_out_dice_mean": float(np.mean(list(scores.values()))),
        "held_out_dice_min": float(np.min(list(scores.values()))),
        "held_out_dice": scores,
        "train_dice_mean": float(np.mean(train_scores)),
        "epochs": args.epochs, "steps_per_epoch": args.steps, "seed": args.seed,
        "train_seconds_cpu": round(seconds, 1),
        "caveat": "the masks are of adults only; pediatric films (Kermany) have no expert masks to check against",
    }
    (args.out / LUNG_CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    print(f"held-out Dice mean {card['held_out_dice_mean']:.3f} (min {card['held_out_dice_min']:.3f}); "
          f"train {card['train_dice_mean']:.3f}; {seconds:.0f} s; "
          f"{(args.out / LUNG_MODEL_FILE).stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
