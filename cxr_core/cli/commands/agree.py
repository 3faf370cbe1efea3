"""``agree``: heatmap-versus-expert agreement for one heatmap file and one mask file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cxr_core.agreement import METRICS, RULES, AgreementInputError, score_image
from cxr_core.explain.binarize import Threshold


def register(sub) -> None:
    p = sub.add_parser("agree", help="agreement between one heatmap (.npy) and one expert mask (.png)")
    p.add_argument("--heatmap", required=True, type=Path,
                   help="heatmap as .npy, 2-D (singleton axes are dropped); upsampled to the mask's size")
    p.add_argument("--mask", required=True, type=Path,
                   help="expert mask: PNG (0 outside, one other value inside) or boolean .npy")
    p.add_argument("--threshold", default="otsu",
                   help="binarisation: otsu (default, as CheXlocalize), a number in [0, 1], or topK%% such as top15%%")
    p.add_argument("--rule", default="true_positive_only", choices=RULES,
                   help="empty-mask rule (default true_positive_only, as CheXlocalize)")
    p.add_argument("--json", action="store_true", help="print one JSON object (undefined metrics as null)")
    p.set_defaults(func=run)


def load_heatmap(path: Path) -> np.ndarray:
    """A 2-D float heatmap from a ``.npy`` file (no pickles); leading/trailing singleton axes dropped."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise AgreementInputError(f"heatmap file not found: {path}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise AgreementInputError(
            f"heatmap {path} is not a readable .npy array ({exc}); accepted: a 2-D numeric .npy") from None
    if not isinstance(arr, np.ndarray):
        raise AgreementInputError(f"heatmap {path} holds several arrays (.npz); accepted: one 2-D .npy array")
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.ndim != 2:
        raise AgreementInputError(f"heatmap {path} has shape {arr.shape}; accepted: a 2-D map (h, w)")
    return arr


def load_mask(path: Path) -> np.ndarray:
    """A boolean mask from a PNG (or any image Pillow reads) with at most two values, or a ``.npy``."""
    if not path.exists():
        raise AgreementInputError(f"mask file not found: {path}")
    if path.suffix.lower() == ".npy":
        arr = load_heatmap(path)
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L"))
        except (UnidentifiedImageError, OSError) as exc:
            raise AgreementInputError(
                f"mask {path} is not a readable image ({exc}); accepted: PNG with values 0 and 255") from None
    values = np.unique(arr)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        raise AgreementInputError(f"mask {path} has values {values[:6].tolist()}{'...' if values.size > 6 else ''}; "
                                  "accepted: a binary mask, 0 outside and one other value inside")
    return arr != 0


def run(args) -> int:
    spec = Threshold.parse(args.threshold)
    heatmap = load_heatmap(Path(args.heatmap))
    mask = load_mask(Path(args.mask))
    scores = score_image(heatmap, mask, spec, args.rule)
    record = {"heatmap": str(args.heatmap), "mask": str(args.mask), "size": list(mask.shape),
              "threshold": str(spec), "rule": args.rule,
              **{k: (v if math.isfinite(v) else None) for k, v in scores.items()}}
    if args.json:
        print(json.dumps(record))
        return 0
    print(f"{args.heatmap} vs {args.mask} ({mask.shape[0]}x{mask.shape[1]}), "
          f"threshold {spec}, rule {args.rule}")
    for key in (*METRICS, "pred_fraction", "gt_fraction"):
        value = scores[key]
        print(f"  {key:<14}{value:.4f}" if math.isfinite(value) else f"  {key:<14}undefined")
    print("Agreement with an expert's marks; model scores are not diagnoses.")
    return 0
