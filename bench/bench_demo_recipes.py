"""Before/after table for a demo-model recipe (issue 16): the shipped demo against a retrained one.

Both models must share the patient split (their ``split.csv`` test rows are compared, and the run is
refused otherwise). Everything is measured on that **test** split with the project's own commands,
run as subprocesses exactly as a user would:

- ``evaluate``: accuracy with its 95% bootstrap interval, accuracy within subgroups (adult Normal
  films), and the shortcut probe (patient-grouped cross-validated AUROC of the penultimate features
  for ``source`` and ``age``);
- ``audit``: the mean share of Grad-CAM mass outside the lungs (expert masks where the data has them,
  the lung U-Net elsewhere), against the share of the film that lies outside the lungs;
- ``sanity``: cascading randomisation verdict and final Spearman rho for Grad-CAM and Grad-CAM++.

The rule for "better", fixed before any number was seen: the new model is better when its source-probe
AUROC is lower, its adult-Normal test accuracy is not lower, and its overall test accuracy is not below
the old model's 95% interval. It prints the table (Markdown) and writes ``comparison.json``.

Usage::

    python bench/bench_demo_recipes.py --before weights --after /tmp/demo-crop \\
        --data ../shared/data/cxr-real --out /tmp/demo-compare
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

NAME = "demo-efficientnetv2b0"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: cxr_core is the repository's package
COLUMNS = ("source", "age")  # "age": the manifest's age_group cut to its first word (adult, pediatric, unknown)


def test_rows(weights: Path) -> list[dict]:
    with (weights / NAME / "split.csv").open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == "test"]


def write_test_manifest(data: Path, rows: list[dict], dest: Path) -> Path:
    """The test split as a manifest (absolute paths) with ``source`` and a short ``age`` column."""
    with (data / "manifest.csv").open(newline="") as fh:
        meta = {r["file"]: r for r in csv.DictReader(fh)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["file", "label", "patient_id", *COLUMNS])
        for r in rows:
            age = (meta[r["file"]].get("age_group") or "unknown").split()[0]
            out.writerow([(data / r["file"]).resolve(), r["label"], r["patient_id"], meta[r["file"]]["source"], age])
    return dest


def run(args: list[str], weights: Path, log: Path) -> None:
    env = {**os.environ, "CXR_WEIGHTS_DIR": str(weights.resolve())}
    with log.open("w") as fh:
        code = subprocess.run([sys.executable, "-m", "cxr_core", *args], cwd=REPO, env=env, stdout=fh,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed ({code}); see {log}")


def measure(weights: Path, manifest: Path, lung_masks: Path, out: Path, *, sanity_limit: int) -> dict:
    """Run evaluate, audit and sanity for the model in ``weights``; return the numbers of the table."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "evaluate.json").is_file():
        run(["evaluate", "--model", NAME, "--data", str(manifest), "--split", "all", "--subgroups", ",".join(COLUMNS),
             "--json", str(out / "evaluate.json")], weights, out / "evaluate.log")
    if not (out / "audit.json").is_file():
        run(["audit", "--model", NAME, "--data", str(manifest), "--lung-masks", str(lung_masks), "--subgroups", "none",
             "--json", str(out / "audit.json")], weights, out / "audit.log")
    if not (out / "sanity.json").is_file():
        run(["sanity", "--model", NAME, "--data", str(manifest), "--limit", str(sanity_limit), "--cascade-only",
             "--json", str(out / "sanity.json")], weights, out / "sanity.log")
    ev = json.loads((out / "evaluate.json").read_text())
    audit = json.loads((out / "audit.json").read_text())
    sanity = json.loads((out / "sanity.json").read_text())
    adult_normal = ev["subgroups"].get("age", {}).get("adult", {}).get("Normal", {})
    probe = {c["column"]: c for c in ev.get("confounds", [])}
    images = [im for im in audit["images"] if im.get("shares", {}).get("outside_lungs") is not None]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "accuracy": ev["metrics"]["accuracy"], "accuracy_ci95": ev["metrics"]["ci95"]["accuracy"],
        "n": ev["metrics"]["n"],
        "adult_normal": adult_normal,
        "probe": {c: {k: probe.get(c, {}).get(k) for k in ("feature_auroc", "label_association", "flagged")}
                  for c in COLUMNS},
        "outside_share": mean([im["shares"]["outside_lungs"] for im in images]),
        "outside_area": mean([im["areas"]["outside_lungs"] for im in images]),
        "audited": len(images),
        "sanity": {m: {"verdict": v["verdict"], "rho": v["cascade"][-1]["spearman"]["mean"],
                       "rho_ci95": v["cascade"][-1]["spearman"].get("ci95"),
                       "abs_rho": v["cascade"][-1]["spearman_abs"]["mean"],
                       "abs_rho_ci95": v["cascade"][-1]["spearman_abs"].get("ci95")}
                   for m, v in sanity["methods"].items()},
        "sanity_films": sanity["n_films"],
    }


def better(before: dict, after: dict) -> tuple[bool, str]:
    """The rule in this module's docstring, with the reason."""
    lo = before["accuracy_ci95"][0]
    src_b, src_a = before["probe"]["source"]["feature_auroc"], after["probe"]["source"]["feature_auroc"]
    an_b, an_a = before["adult_normal"].get("accuracy"), after["adult_normal"].get("accuracy")
    checks = [
        (src_a is not None and src_b is not None and src_a < src_b, f"source-probe AUROC {src_b} -> {src_a}"),
        (an_a is not None and an_b is not None and an_a >= an_b, f"adult-Normal test accuracy {an_b} -> {an_a}"),
        (after["accuracy"] >= lo, f"overall accuracy {after['accuracy']:.3f} vs the old 95% interval's low end "
                                  f"{lo:.3f}"),
    ]
    return all(ok for ok, _ in checks), "; ".join(("ok: " if ok else "NOT: ") + why for ok, why in checks)


def _f(v, pct=False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def table(before: dict, after: dict) -> str:
    def an(m):
        a = m["adult_normal"]
        return f"{a.get('correct', '?')}/{a.get('n', '?')} ({_f(a.get('accuracy'), True)})" if a else "n/a"

    def acc(m):
        lo, hi = m["accuracy_ci95"]
        return f"{_f(m['accuracy'], True)} [{_f(lo, True)}, {_f(hi, True)}] (n={m['n']})"

    def out(m):
        return f"{_f(m['outside_share'], True)} (outside-lung area {_f(m['outside_area'], True)}, n={m['audited']})"

    def probe(m, c):
        p = m["probe"][c]
        return f"{_f(p['feature_auroc'])}" + (" (flagged)" if p["flagged"] else "")

    def san(m, method):
        s = m["sanity"].get(method)
        return (f"{s['verdict']}, rho {s['rho']:.3f}, mean abs rho {s['abs_rho']:.3f} [{s['abs_rho_ci95'][0]:.3f}, "
                f"{s['abs_rho_ci95'][1]:.3f}] (n={m['sanity_films']})") if s else "n/a"

    rows = [("test accuracy [95% CI]", acc), ("adult Normal test accuracy", an),
            ("Grad-CAM mass outside the lungs", out),
            ("probe AUROC for source", lambda m: probe(m, "source")),
            ("probe AUROC for age", lambda m: probe(m, "age")),
            ("sanity Grad-CAM (full cascade: verdict, Spearman)", lambda m: san(m, "gradcam")),
            ("sanity Grad-CAM++ (full cascade: verdict, Spearman)", lambda m: san(m, "gradcam++"))]
    lines = ["| held-out test split | before (shipped demo) | after (retrained) |", "|---|---|---|"]
    lines += [f"| {name} | {fn(before)} | {fn(after)} |" for name, fn in rows]
    return "\n".join(lines)


def record(weights: Path, result: dict, recipe: str) -> None:
    """Keep the comparison in the card of the model in ``weights`` (a note, and ``mitigation_trials``)."""
    from cxr_core.models.manifest import read_card, write_card

    folder = weights / NAME
    card = read_card(folder)
    b, a = result["before"], result["after"]
    note = (f"Issue 16 mitigation tried ({recipe}) and measured on this model's patient-held-out test split: "
            f"accuracy {b['accuracy']:.1%} -> {a['accuracy']:.1%}, adult Normal "
            f"{b['adult_normal'].get('correct')}/{b['adult_normal'].get('n')} -> "
            f"{a['adult_normal'].get('correct')}/{a['adult_normal'].get('n')}, source-probe AUROC "
            f"{_f(b['probe']['source']['feature_auroc'])} -> {_f(a['probe']['source']['feature_auroc'])}, Grad-CAM "
            f"mass outside the lungs {_f(b['outside_share'], True)} -> {_f(a['outside_share'], True)}. "
            + ("Better by the stated rule, so it replaced the earlier model." if result["better"] else
               "Not better by the stated rule (" + result["why"] + "), so this model stays the shipped demo.")
            + " See docs/demo-model.md.")
    card.notes = [n for n in card.notes if not n.startswith("Issue 16 mitigation tried")] + [note]
    card.extra["mitigation_trials"] = [{"recipe": recipe, "better": result["better"], "rule_check": result["why"],
                                        "before": b, "after": a}]
    write_card(folder, card)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, default=REPO / "weights", help="registry holding the shipped demo")
    p.add_argument("--after", type=Path, required=True, help="registry holding the retrained demo")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr-real")
    p.add_argument("--out", type=Path, default=Path("/tmp/demo-compare"))
    p.add_argument("--sanity-limit", type=int, default=12, help="films for the sanity checks (taken across classes)")
    p.add_argument("--record", metavar="RECIPE", help="write the comparison into the shipped card (--before) as a "
                   "note naming RECIPE (e.g. 'lung crop + source-balanced weights')")
    args = p.parse_args(argv)
    rows_b, rows_a = test_rows(args.before), test_rows(args.after)
    if sorted(r["file"] for r in rows_b) != sorted(r["file"] for r in rows_a):
        raise SystemExit("the two models have different test splits; retrain with --split <the demo's split.csv>")
    manifest = write_test_manifest(args.data, rows_b, args.out / "test.csv")
    masks = args.data / "annotations" / "lung_masks"
    result = {}
    for label, weights in (("before", args.before), ("after", args.after)):
        print(f"measuring {label} ({weights}) ...", flush=True)
        result[label] = measure(weights, manifest, masks, args.out / label, sanity_limit=args.sanity_limit)
    ok, why = better(result["before"], result["after"])
    result["better"], result["why"] = ok, why
    (args.out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["before"], result["after"]))
    print(f"\nbetter by the stated rule: {'yes' if ok else 'no'} ({why})")
    if args.record:
        record(args.before, result, args.record)
        print(f"recorded in {args.before / NAME / 'card.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
