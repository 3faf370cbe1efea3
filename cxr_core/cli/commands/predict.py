"""``predict``: class probabilities for one or more X-ray files, optionally with a heatmap.

Each file takes the one analysis path (:func:`cxr_core.analysis.analyse`: screen, warn, predict, explain):
one that does not look like a frontal chest X-ray is not analysed (a reason on stderr, exit code 2, the other
files still processed) unless ``--allow-ood`` is given. The reader's warnings (demonstration model, missing
classes, small or oddly shaped film) go into every JSON record as ``warnings`` and, without ``--json``, to
stderr as ``note:`` lines.

Films are named by their pseudonymous label ``film-<8 hex of the pixel SHA-256>``
(:func:`cxr_core.io.film_facts.film_label`) in records, printed lines and ``--out`` file names, since file
names often carry a patient's name; ``--keep-names`` keeps the paths for a researcher's local work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cxr_core.errors import CXRError

CAM_CHOICES = ("gradcam", "gradcam++", "random", "none")
COLORMAP_CHOICES = ("turbo", "jet", "inferno", "viridis", "gray")  # cxr_core.explain.overlay.COLORMAPS (no cv2 at start-up)


def register(sub) -> None:
    p = sub.add_parser("predict", help="class probabilities for X-ray files (scores are not diagnoses)")
    p.add_argument("paths", nargs="+", help="PNG, JPEG, TIFF or DICOM files (with --parquet also folders and "
                   "manifest CSVs)")
    p.add_argument("--model", required=True, help="registered model name (see `models`)")
    p.add_argument("--json", action="store_true", help="print one JSON object per input")
    p.add_argument("--out", type=Path, help="write <stem>.json per input into this folder "
                   "(with --cam also <stem>.heatmap.npy and <stem>.overlay.png)")
    p.add_argument("--cam", choices=CAM_CHOICES, default="none",
                   help="heatmap method (default none); maps are min-max scaled within each image")
    p.add_argument("--target", help="class the heatmap explains (default: the predicted class of each image)")
    p.add_argument("--colormap", choices=COLORMAP_CHOICES, default="turbo", help="overlay colours (default turbo)")
    p.add_argument("--keep-names", action="store_true",
                   help="name films by their path in records, output and --out file names (default: the "
                        "pseudonymous label film-<8 hex of the pixel hash>, since file names often identify patients)")
    p.add_argument("--allow-ood", action="store_true",
                   help="expert override: score inputs refused as not looking like a frontal chest X-ray "
                        "(logged, and recorded in the output as ood.overridden)")
    from cxr_core.engines.batch import add_arguments

    add_arguments(p)  # --engine local|ray, --address, --parquet OUT, --actors: a whole archive into Parquet
    p.set_defaults(func=run)


def run(args) -> int:
    from cxr_core.analysis import cam_engine
    from cxr_core.models.manifest import load_model
    from cxr_core.models.runtime import import_tensorflow_quietly
    from cxr_core.safety.screening import screener

    if args.target and args.cam == "none":
        raise CXRError("--target only applies with --cam gradcam, gradcam++ or random")
    from cxr_core.engines.batch import BatchSpec, run_cli, wants_archive

    if wants_archive(args):  # paths may then also be folders or manifest CSVs (cxr_core.engines.batch)
        if args.target or args.out or args.json:
            raise CXRError("--parquet writes one row per film; --target, --out and --json apply without it")
        return run_cli(args, BatchSpec(args.model, "predict", cam=args.cam, allow_ood=args.allow_ood,
                                       keep_names=args.keep_names), args.paths)
    import_tensorflow_quietly()
    loaded = load_model(args.model)
    engine = None
    if args.cam != "none":
        from cxr_core.explain.cam import resolve_target

        resolve_target(loaded.card.classes, args.target)  # an unknown class fails before any tracing
        engine = cam_engine(loaded)  # a model without a trustworthy heatmap stops here, before any film
    screen = screener(loaded)
    failed = 0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    args.out_stems = {}  # input path -> output stem, unique even when two inputs share a file stem
    for i, path in enumerate(args.paths, start=1):
        try:  # one unreadable or unexplainable film is reported; the others are still analysed
            failed += not _predict_one(path, args, loaded, engine, screen)
        except CXRError as exc:
            where = path if getattr(args, "keep_names", False) else f"input {i} of {len(args.paths)}"
            print(f"error: {where}: {exc}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def _predict_one(path, args, loaded, engine, screen) -> bool:
    """Analyse one file (:func:`cxr_core.analysis.analyse`), print and write its outputs; False when refused."""
    from cxr_core.analysis import analyse
    from cxr_core.io.imaging import load_xray

    from cxr_core.io.film_facts import film_label

    xray = load_xray(path)
    film = str(path) if getattr(args, "keep_names", False) else film_label(xray.sha256)  # the film's name
    result = analyse(loaded, xray, method=None if args.cam == "none" else args.cam, target=args.target,
                     allow_ood=args.allow_ood, screener=screen, engine=engine)
    if result.refused:
        print(f"{film}: {result.refusal_message()}", file=sys.stderr)
        record = result.record(film)
        if args.out:
            write_outputs(args.out / _stem(args, path, film), record, xray, None, args.colormap)
        if args.json:
            print(json.dumps(record))
        return False
    record = result.record(film)
    if result.overridden:
        print(f"warning: {film}: expert override (--allow-ood) of \"{result.refusal_message()}\"",
              file=sys.stderr)
        record["ood"] = result.override_record(where="cli --allow-ood", image=film)
    if args.out:
        write_outputs(args.out / _stem(args, path, film), record, xray, result.cam, args.colormap)
    if args.json:
        print(json.dumps(record))
    else:
        scores = ", ".join(f"{c} {p:.1%}" for c, p in record["probabilities"].items())
        cam = result.cam
        shown = "" if cam is None else f"; {cam.method} heatmap for {cam.target}" + (
            " (no positive evidence)" if cam.all_zero else "")
        print(f"{film}: {record['predicted']} (model scores: {scores}){shown}")
        for warning in result.warnings:
            print(f"note: {film}: {warning.plain()}", file=sys.stderr)
    return True


def _stem(args, path, film: str) -> str:
    """The output stem of ``path``: ``film`` (the film label, or with ``--keep-names`` the file stem), with
    ``-2``, ``-3``... when an earlier input had the same one."""
    if path not in args.out_stems:
        taken = set(args.out_stems.values())
        stem, n = (Path(path).stem if getattr(args, "keep_names", False) else film), 1
        while (stem if n == 1 else f"{stem}-{n}") in taken:
            n += 1
        args.out_stems[path] = stem if n == 1 else f"{stem}-{n}"
    return args.out_stems[path]


def write_outputs(stem: Path, record: dict, xray, result, colormap: str) -> None:
    """``<stem>.json``, and with a CAM ``<stem>.heatmap.npy`` (float32, H x W, [0, 1]) and ``<stem>.overlay.png``.

    Everything is made in memory first, so a film whose overlay cannot be drawn leaves no partial outputs.
    """
    files = {".json": json.dumps(record, indent=2).encode()}
    if result is not None:
        import io

        import numpy as np

        from cxr_core.explain.overlay import overlay, to_png_bytes

        png = to_png_bytes(overlay(xray.pixels, result.heatmap, colormap=colormap))
        npy = io.BytesIO()
        np.save(npy, result.heatmap.astype(np.float32))
        files.update({".heatmap.npy": npy.getvalue(), ".overlay.png": png})
    for suffix, data in files.items():
        stem.with_name(stem.name + suffix).write_bytes(data)
