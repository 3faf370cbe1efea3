"""``sanity``: can a model's heatmaps be trusted to explain it? Randomisation checks and deletion/insertion AUC.

The results are printed (and with ``--json FILE`` written there); ``weights/NAME/sanity.json``, which
the models page shows, is written only with ``--record``. Nothing else is changed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cxr_core.errors import DataError


def register(sub) -> None:
    p = sub.add_parser("sanity", help="heatmap sanity checks (weight randomisation) and deletion/insertion AUC")
    p.add_argument("--model", required=True, help="registered model name (see `models`)")
    p.add_argument("--data", required=True, type=Path,
                   help="films: class folders, a CSV manifest, or a folder of images (labels are not needed)")
    p.add_argument("--method", action="append", choices=("gradcam", "gradcam++"),
                   help="CAM method to check (repeat for both; default both)")
    p.add_argument("--limit", type=int, default=16, help="use at most N films, taken in turn from each class (16)")
    p.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (16)")
    p.add_argument("--substrate", choices=("blur", "mean"), default="blur",
                   help="what deleted pixels become and insertion starts from: RISE's blurred film or its mean")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals (1000)")
    p.add_argument("--seed", type=int, default=0, help="seed for re-initialisation, tie order and bootstrap (0)")
    p.add_argument("--cascade-only", action="store_true", help="skip the independent (one block at a time) rows")
    p.add_argument("--json", metavar="FILE", help="also write the full results as JSON to FILE")
    p.add_argument("--record", action="store_true",
                   help="also keep the results next to the model (weights/NAME/sanity.json) for the models page")
    p.set_defaults(func=run)


def film_paths(data: Path, limit: int) -> list[Path]:
    """Up to ``limit`` image files of ``data``, taken in turn from each class (evenly spaced in name order when
    the folder has no labels)."""
    from cxr_core.io.imaging import IMAGE_SUFFIXES
    from cxr_core.training.dataset import load_records

    if limit < 1:
        raise DataError(f"--limit must be at least 1; got {limit}")
    try:
        records = load_records(data)
        groups: dict[str, list[Path]] = {}
        for r in records:
            groups.setdefault(r.label, []).append(r.file)
    except DataError:
        if not data.is_dir():
            raise
        files = sorted(p for p in data.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{data} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and no class folders")
        k = min(limit, len(files))
        spread = sorted({round(i * (len(files) - 1) / max(k - 1, 1)) for i in range(k)})
        groups = {"": [files[i] for i in spread]}  # evenly spaced in name order, not just the first names
    picked: list[Path] = []
    queues = [list(v) for v in groups.values()]
    while len(picked) < limit and any(queues):
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return picked


def _row(label: str, values: dict) -> str:
    def cell(m):
        v = values[m]
        return f"{v['mean']:6.3f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]" if v["mean"] is not None else "   n/a"
    return f"  {label:18s} |rho| {cell('spearman_abs')}   SSIM {cell('ssim')}"


def print_summary(result: dict) -> None:
    """The verdicts, the cascade and the faithfulness AUCs as a short table."""
    base = result["random_baseline"]["faithfulness"]
    print(f"{result['model']} on {result['n_films']} films of {result['data']} "
          f"(mean [95% bootstrap interval] over films; threshold: {result['threshold']['measure']} "
          f"< {result['threshold']['value']})")
    for method, r in result["methods"].items():
        print(f"{method}: {r['verdict'].upper()} - {r['reason']}")
        print(f"  cascade, randomised from the top down to ({r['films_compared']} films compared):")
        for row in r["cascade"]:
            print(_row(row["block"], row))
        f = r["faithfulness"]
        for mode, better in (("deletion", "lower"), ("insertion", "higher")):
            a, b = f[mode]["auc"], base[mode]["auc"]
            print(f"  {mode} AUC {a['mean']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]  vs random heatmap "
                  f"{b['mean']:.3f} [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}] ({better} is better)")


def run(args) -> int:
    from cxr_core.io.imaging import load_xray
    from cxr_core.models.manifest import load_model, model_folder
    from cxr_core.models.runtime import import_tensorflow_quietly
    from cxr_core.explain.sanity import METHODS, RECORD_FILE, run_sanity

    paths = film_paths(args.data, args.limit)
    if args.steps < 1 or args.n_boot < 1:
        raise DataError("--steps and --n-boot must be at least 1")
    films = [load_xray(p).pixels for p in paths]
    import_tensorflow_quietly()
    loaded = load_model(args.model)
    methods = tuple(dict.fromkeys(args.method)) if args.method else METHODS
    result = {"model": loaded.name, "model_sha256": loaded.card.sha256, "data": str(args.data),
              "films": [str(p.relative_to(args.data)) if p.is_relative_to(args.data) else str(p) for p in paths]}
    result.update(run_sanity(loaded.model, loaded.spec, loaded.card.classes, films, methods=methods,
                             independent=not args.cascade_only, steps=args.steps, substrate=args.substrate,
                             n_boot=args.n_boot, seed=args.seed,
                             progress=lambda msg: print(msg, file=sys.stderr)))
    text = json.dumps(result, indent=2) + "\n"
    print_summary(result)
    targets = ([Path(args.json)] if args.json else []) + ([model_folder(args.model) / RECORD_FILE]
                                                          if args.record else [])
    for target in targets:
        try:
            target.write_text(text)
        except OSError as exc:
            raise DataError(f"cannot write the results to {target}: {exc.strerror or exc}") from exc
        print(f"results written to {target}")
    if not args.record:
        print("not recorded: the models page still shows the previous record (add --record to keep these results)")
    return 0
