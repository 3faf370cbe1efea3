"""An audit's JSON (:func:`cxr_core.audit.to_json`) as one self-contained HTML page and as plain text lines.

No scripts and no external files: bars are CSS, thumbnails are inline PNGs, so the page can be
mailed or archived as it is. The page is the Jinja2 template ``templates/audit_report.html.j2``
with autoescaping: a model, class or file name is always shown as text.
"""

from __future__ import annotations

from cxr_core.audit import REGIONS, fmt_share

REGION_LABELS = {
    "outside_lungs": "outside the lungs",
    "border": "outer border band",
    "markers": "over burned-in text/markers",
    "top_left": "top-left corner",
    "top_right": "top-right corner",
    "bottom_left": "bottom-left corner",
    "bottom_right": "bottom-right corner",
}


def _interval(stats: dict) -> str:
    if stats.get("mean") is None:
        return "n/a"
    return f"{fmt_share(stats['mean'])} (95% CI {fmt_share(stats['low'])}-{fmt_share(stats['high'])})"


def summary_lines(data: dict, *, by: str = "predicted") -> list[str]:
    """One line per class: '<class>: 41% of heatmap mass outside the lungs (95% CI ...; even spread 62%), n=...'."""
    summary = data["summary_by_predicted" if by == "predicted" else "summary_by_label"]
    lines = []
    for cls, stats in summary.items():
        region = stats["regions"]["outside_lungs"]
        lines.append(
            f"{cls}: {fmt_share(region['mean'])} of heatmap mass outside the lungs "
            f"(95% CI {fmt_share(region['low'])}-{fmt_share(region['high'])}; an even spread would give "
            f"{fmt_share(region['area'])}), {stats['n']} images, {stats['n_patients']} patients"
        )
    return lines


def shortcut_lines(data: dict) -> list[str]:
    """Plain sentences for each shortcut flag (empty when nothing is flagged)."""
    out = []
    for key, what in (("shortcuts_by_predicted", "predicted"), ("shortcuts_by_label", "labelled")):
        for f in data.get(key, []):
            out.append(
                f"Possible shortcut: images {what} {f['class']} put {fmt_share(f['mean'])} of their heatmap mass outside "
                f"the lungs, {fmt_share(f['difference'])} more than {f['next_class']} ({fmt_share(f['next_mean'])}; "
                f"95% CI of the difference {fmt_share(f['low'])}-{fmt_share(f['high'])})."
            )
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def confound_lines(data: dict) -> list[str]:
    """One plain sentence per flagged confound (empty when none is flagged or none was looked for)."""
    return [
        f"Possible confound: {c['column']}. The model's features predict it (AUROC {_fmt(c['feature_auroc'])}), it "
        f"goes with the label (Cramér's V {_fmt(c['label_association'])}), and accuracy within a class differs "
        f"between its values: " + "; ".join(c["evidence"]) + ". Its scores may reflect the film's "
        f"{c['column']} rather than the disease."
        for c in data.get("confounds") or [] if c.get("flagged")
    ]


def confound_rows(data: dict) -> list[dict]:
    """A row per column probed: column, feature AUROC, Cramér's V, the within-class accuracy gap, flag."""
    return [{"column": c["column"], "feature AUROC": _fmt(c["feature_auroc"]),
             "Cramér's V with the label": _fmt(c["label_association"]),
             "accuracy gap within a class": "n/a" if c.get("accuracy_gap") is None else f"{c['accuracy_gap']:.0%}",
             "flagged": "yes" if c["flagged"] else "no", "evidence": "; ".join(c["evidence"])}
            for c in data.get("confounds") or []]


def subgroup_rows(data: dict) -> list[dict]:
    """A row per (column, value, class): films, correct, accuracy and AUC with their 95% intervals."""
    def ci(pair, fmt: str = ".0%"):
        return "" if not pair else f" ({pair[0]:{fmt}}-{pair[1]:{fmt}})"

    rows = []
    for column, values in (data.get("subgroups") or {}).items():
        for value, per_class in values.items():
            for cls, m in per_class.items():
                rows.append({"column": column, "value": value, "class": cls, "films": m["n"], "correct": m["correct"],
                             "accuracy (95% CI)": ("n/a" if m["accuracy"] is None else
                                                   f"{m['accuracy']:.0%}{ci(m['accuracy_ci95'])}"),
                             "AUC (95% CI)": ("n/a" if m["auc"] is None else
                                              f"{m['auc']:.2f}{ci(m['auc_ci95'], '.2f')}")})
    return rows


def _table(summary: dict, caption: str) -> dict | None:
    if not summary:
        return None
    rows = []
    for cls, stats in summary.items():
        cells = [{"value": stats["regions"][r]["mean"], "area": stats["regions"][r]["area"],
                  "share": fmt_share(stats["regions"][r]["mean"]), "interval": _interval(stats["regions"][r])}
                 for r in REGIONS]
        rows.append({"name": cls, "n": stats["n"], "n_patients": stats["n_patients"], "cells": cells})
    return {"caption": caption, "rows": rows}


def render_html(data: dict) -> str:
    """The whole report as one HTML string (Jinja2 template ``audit_report.html.j2``, every value escaped)."""
    from cxr_core.io.templating import render

    markers: dict[str, int] = {}
    for im in data["images"]:
        for m in im["markers"]:
            markers[m["kind"]] = markers.get(m["kind"], 0) + 1
    lung_sources: dict[str, int] = {}
    for im in data["images"]:
        lung_sources[im["lung_source"]] = lung_sources.get(im["lung_source"], 0) + 1
    tables = [_table(data["summary_by_predicted"], "By predicted class"),
              _table(data.get("summary_by_label") or {}, "By true class (labels from the data)")]
    gallery = [{"png_base64": f["thumbnail_png_base64"], "name": f["file"].split("/")[-1],
                "outside": fmt_share(f["outside"]), "outside_area": fmt_share(f["outside_area"]),
                "predicted": f["predicted"], "label": f["label"]} for f in data["flagged"]]
    return render(
        "audit_report.html.j2",
        model=data["model"], n_images=data["n_images"], n_failures=len(data["failures"]),
        lung_sources=", ".join(f"{k} ({v})" for k, v in sorted(lung_sources.items())),
        with_markers=sum(1 for im in data["images"] if im["markers"]),
        markers=", ".join(f"{k}: {v}" for k, v in sorted(markers.items())) or "none",
        preprocessing=("markers and border masked before the model" if data["settings"].get("mask_markers")
                       else "as trained (no masking)"),
        flags=shortcut_lines(data), margin=fmt_share(data["settings"].get("shortcut_margin")),
        region_labels=[REGION_LABELS[r] for r in REGIONS], tables=[t for t in tables if t],
        gallery=gallery, failures=data["failures"],
        refused=[{"file": r["file"].split("/")[-1], "reasons": r.get("reasons", []),
                  "details": [d for d in r.get("details", []) if d]}
                 for r in data.get("refused", []) if not r.get("overridden")],
        confound_flags=confound_lines(data), confounds=confound_rows(data), subgroups=subgroup_rows(data),
    )


__all__ = ["render_html", "summary_lines", "shortcut_lines", "confound_lines", "confound_rows", "subgroup_rows",
           "REGION_LABELS"]
