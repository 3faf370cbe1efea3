"""``report``: a reading session's heatmap-versus-expert agreement as CSV, JSON, HTML or COCO."""

from __future__ import annotations

from pathlib import Path

from cxr_core.agreement import RULES
from cxr_core.auth.cli_identity import add_user_argument, check_view_as, cli_user, record_cli

FORMATS = ("csv", "json", "html", "coco")


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="agreement of model heatmaps with a session's expert marks, exported as a report",
        description="Scores every submitted reading of a session against each model's heatmap and its random-CAM "
                    "baseline (computing and storing heatmaps not yet stored), then writes one report file. "
                    "Images still read blind are left out (see --reader). Model scores are not diagnoses.")
    p.add_argument("--session", required=True, help="reading session name")
    p.add_argument("--allow-ood", action="store_true",
                   help="also score images a model refuses as not a frontal chest X-ray (expert override; logged)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="csv: one row per image x model x reader (and one per reading a reader excluded); json: "
                        "everything with method, versions and checksums; html: self-contained report; coco: one "
                        "annotation per drawn region (polygon or RLE, category = finding), consensus and heatmap "
                        "masks, readings' diagnoses as attributes")
    p.add_argument("--out", required=True, type=Path, help="file to write")
    p.add_argument("--model", action="append", default=None, metavar="NAME",
                   help="registered model to score (repeat for several; default: every ready model)")
    p.add_argument("--method", default="gradcam", choices=("gradcam", "gradcam++"),
                   help="CAM method (default gradcam); the random baseline is always scored beside it")
    p.add_argument("--threshold", default="otsu",
                   help="binarisation: otsu (default, as CheXlocalize), a number in [0, 1], or topK%% such as top15%%")
    p.add_argument("--rule", default="true_positive_only", choices=RULES,
                   help="empty-mask rule (default true_positive_only, as CheXlocalize)")
    p.add_argument("--cam-target", default="expert", choices=("expert", "predicted"),
                   help="class each heatmap explains: the expert's (default; the model's top class where it has no "
                        "such class) or always the model's top class")
    p.add_argument("--reader", default=None,
                   help="report as this reader sees it: images pending in their blind readings are left out "
                        "(default: nobody, so images pending for anyone are left out)")
    p.add_argument("--gallery", type=int, default=3, help="worst and best cases each in the HTML gallery (default 3)")
    p.add_argument("--no-consensus", action="store_true",
                   help="leave out the consensus pseudo-readers (majority vote and STAPLE of the readers of each film "
                        "two or more read), scored by default as extra readers")
    p.add_argument("--no-compute", action="store_true",
                   help="use stored heatmaps only; readings without one are left out")
    add_user_argument(p)
    p.set_defaults(func=run)


def _models(names: list[str] | None):
    """(ModelRef, engine loader) per requested (or every ready) registered model."""
    from cxr_core.models.manifest import list_models
    from cxr_core.agreement.session_scores import ModelRef, SessionScoresError

    entries = {e.name: e for e in list_models()}
    ready = [n for n, e in entries.items() if e.ready]
    wanted = list(dict.fromkeys(names)) if names else ready
    if not wanted:
        raise SessionScoresError("no ready model is registered; run `python -m cxr_core demo-model` or import one")
    out = []
    for name in wanted:
        entry = entries.get(name)
        if entry is None or not entry.ready:
            why = "not registered" if entry is None else f"{entry.status}: {entry.message}"
            raise SessionScoresError(f"model {name!r} is {why}; ready models: {', '.join(ready) or 'none'}")

        def engine(name=name):
            from cxr_core.analysis import cam_engine

            return cam_engine(_loaded(name))

        out.append((ModelRef.from_card(entry.card), engine))
    return out


_LOADED: dict = {}


def _loaded(name: str):
    """Each model loaded once per run, shared by its CAM engine and its screener."""
    if name not in _LOADED:
        from cxr_core.models.manifest import load_model
        from cxr_core.models.runtime import import_tensorflow_quietly

        import_tensorflow_quietly()
        _LOADED[name] = load_model(name)
    return _LOADED[name]


def _screens(names):
    """Per model, the first steps of the one analysis path (:func:`cxr_core.analysis.screen_films`)."""
    from cxr_core.analysis import screen_films

    return {name: (lambda xrays, name=name: screen_films(_loaded(name), xrays)) for name in names}


def run(args) -> int:
    import sys

    from cxr_core.agreement import reports
    from cxr_core.agreement.session_report import session_report
    from cxr_core.agreement.session_scores import SessionScoresError, excluded_note
    from cxr_core.storage import make_engine, session_factory

    user = cli_user(args, "cli:report")  # researcher or admin, logged in (cxr_core.auth)
    check_view_as(user, args.reader)
    if args.gallery < 0:
        raise SessionScoresError(f"--gallery {args.gallery}; expected 0 or more cases")
    models = _models(args.model)
    factory = session_factory(make_engine())

    def progress(model: str, done: int, total: int) -> None:
        print(f"{model}: {done} of {total} heatmaps computed", file=sys.stderr)

    result = session_report(factory, args.session, models, method=args.method, threshold=args.threshold,
                            rule=args.rule, cam_target=args.cam_target, reader=args.reader,
                            compute=not args.no_compute, gallery=args.gallery, progress=progress,
                            with_consensus=not args.no_consensus,
                            screens=None if args.allow_ood else _screens([m.name for m, _ in models]))
    if args.allow_ood:
        import logging

        logging.getLogger("cxr_core.safety.screening").warning(
            "report for session %r: out-of-distribution refusal overridden (--allow-ood)", args.session)
    report = result.report
    text = {"csv": lambda: reports.to_csv(report.scores, report.excluded, report.refused),
            "json": lambda: reports.to_json(report),
            "html": lambda: reports.to_html(report), "coco": result.coco}[args.format]()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    record_cli(user, "export", detail=f"report of session {args.session!r} as {args.format}: {args.out}")
    data = result.data
    for r in report.refused:
        why = "; ".join(f"{reason} [{d}]" if d else reason for reason, d in zip(r["reasons"], r.get("details", ())))
        print(f"not analysed by {r['model']}: {r['image_id']} does not look like a frontal chest X-ray ({why})",
              file=sys.stderr)
    print(f"wrote {args.format} report of session {data.name!r} to {args.out}: {len(report.scores)} scores, "
          f"{len({s.image_id for s in report.scores})} images, readers {', '.join(data.readers)}"
          f"{' and ' + ', '.join(data.consensus_readers) if data.consensus_readers else ''}, "
          f"models {', '.join(m.name for m, _ in models)} ({args.method} and random baseline), "
          f"threshold {report.scores[0].threshold if report.scores else args.threshold}, rule {args.rule}")
    if data.hidden:
        print(f"note: {len(data.hidden)} image(s) left out: still pending in a blind reading"
              + (f" of {args.reader}" if args.reader else " (no --reader given, so pending for anyone)"),
              file=sys.stderr)
    if data.excluded:
        print(f"note: {excluded_note(data.excluded)}", file=sys.stderr)
    missing = sum(p.missing for p in result.pairsets)
    if missing:
        print(f"note: {missing} reading x model pairs have no stored heatmap and were left out", file=sys.stderr)
    print("Agreement of heatmaps with expert marks; model scores are not diagnoses.")
    return 0
