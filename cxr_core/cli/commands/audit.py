"""``audit``: where a model's Grad-CAM evidence lies across a whole dataset (lungs, border, corners, markers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cxr_core.errors import CXRError


def register(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="share of heatmap mass outside the lungs, on the border and over burned-in markers, per image and class",
    )
    p.add_argument("--model", required=True, help="registered model name (see `models`)")
    p.add_argument("--data", required=True, type=Path,
                   help="a manifest CSV (file,label[,patient_id]), a folder with manifest.csv, class folders, "
                        "or a plain folder of images (unlabelled)")
    p.add_argument("--lung-masks", type=Path, help="folder of expert lung masks named <image stem>[_*].png")
    p.add_argument("--out", type=Path, help="write a self-contained HTML report here")
    p.add_argument("--json", type=Path, help="write the full audit (per-image records, summaries) as JSON here")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call (default 16; 64+ on a GPU)")
    p.add_argument("--mask-markers", action="store_true",
                   help="inpaint detected markers and black out the border band before the model sees each film")
    p.add_argument("--top-k", type=int, default=12, help="images kept for the flagged gallery (default 12)")
    p.add_argument("--workers", type=int, default=2, help="threads decoding the next batch (default 2)")
    p.add_argument("--limit", type=int, help="audit only the first N images (a quick look)")
    p.add_argument("--subgroups", metavar="COL,...",
                   help="manifest columns to treat as subgroups and probe for confounds (default: every extra column "
                        "with 2-12 values); 'none' skips the subgroup and confound analysis")
    from cxr_core.engines.batch import add_arguments

    add_arguments(p)  # --engine local|ray, --address, --parquet OUT, --actors: per-film rows into Parquet
    p.set_defaults(func=run)


def items_from(data: Path, limit: int | None = None) -> list:
    """AuditItems from a manifest, class folders, or (unlabelled) a plain folder of images."""
    from cxr_core.audit import AuditItem
    from cxr_core.training.dataset import IMAGE_SUFFIXES, load_records
    from cxr_core.errors import DataError

    try:
        items = [AuditItem(r.file, r.label, r.patient_id if r.patient_id != Path(r.file).stem else "", dict(r.extra))
                 for r in load_records(data)]
    except DataError:
        files = sorted(p for p in Path(data).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if Path(data).is_dir() else []
        if not files:
            raise
        items = [AuditItem(p) for p in files]
    return items[:limit] if limit else items


class Progress:
    """A one-line progress bar on stderr (a line per 10 % when stderr is not a terminal)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        if self.tty:
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r[{bar:<30}] {done}/{total} images")
            if done >= total:
                self.stream.write("\n")
        elif int(frac * 10) > self.last:
            self.last = int(frac * 10)
            self.stream.write(f"{done}/{total} images audited\n")
        self.stream.flush()


def run(args) -> int:
    from cxr_core.analysis import cam_engine
    from cxr_core.audit import run_audit, to_json
    from cxr_core.audit.confounds import add_to_report
    from cxr_core.audit.report import confound_lines, render_html, shortcut_lines, summary_lines
    from cxr_core.models.manifest import load_model
    from cxr_core.models.runtime import import_tensorflow_quietly

    if args.batch_size < 1:
        raise CXRError(f"--batch-size must be at least 1, got {args.batch_size}")
    from cxr_core.engines.batch import BatchSpec, run_cli, wants_archive

    if wants_archive(args):  # per-film rows (shares, heatmap figures) for an archive; no HTML/JSON summary
        if args.out or args.json:
            raise CXRError("--parquet writes one row per film; --out and --json are the in-memory audit's reports")
        spec = BatchSpec(args.model, "audit", mask_markers=args.mask_markers, batch_size=args.batch_size,
                         lung_masks=str(args.lung_masks) if args.lung_masks else None)
        return run_cli(args, spec, [args.data], limit=args.limit)
    items = items_from(args.data, args.limit)
    import_tensorflow_quietly()
    loaded = load_model(args.model)
    engine = cam_engine(loaded)
    report = run_audit(
        engine, items, lung_masks=args.lung_masks, batch_size=args.batch_size, mask_markers_first=args.mask_markers,
        top_k=args.top_k, progress=Progress(), workers=args.workers, model_name=loaded.name, loaded=loaded,
    )
    wanted = [c.strip() for c in (args.subgroups or "").split(",") if c.strip()]
    if wanted != ["none"] and any(im.label for im in report.images):
        add_to_report(report, loaded, items, wanted=wanted or None)
    data = to_json(report)
    for line in confound_lines(data):  # a confound first: it is what the heatmap shares cannot show
        print(line)
    print(f"Audit of {loaded.name} on {data['n_images']} images (model scores are not diagnoses).")
    if data["n_refused"]:
        print(f"{data['n_refused']} film(s) not analysed: they do not look like a frontal chest X-ray "
              "(listed on stderr and in the report; in no number below).")
    print("By predicted class:")
    for line in summary_lines(data, by="predicted"):
        print("  " + line)
    if data["summary_by_label"]:
        print("By true class:")
        for line in summary_lines(data, by="label"):
            print("  " + line)
    for line in shortcut_lines(data) or ["No class relies on evidence outside the lungs far more than the others."]:
        print(line)
    for failure in report.failures:
        print(f"error: {failure['file']}: {failure['error']}", file=sys.stderr)
    for r in report.refused:
        print(f"not analysed: {r['file']}: " + "; ".join(f"{reason} [{d}]" if d else reason
                                                      for reason, d in zip(r["reasons"], r["details"])),
              file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data))
        print(f"JSON written to {args.json}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render_html(data))
        print(f"HTML report written to {args.out}")
    return 0
