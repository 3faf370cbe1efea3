"""An audit's JSON (:func:`cxr_core.audit.to_json`) as one self-contained HTML page and as plain text lines.

No scripts and no external files: bars are CSS, thumbnails are inline PNGs, so the page can be
mailed or archived as it is.
"""

from __future__ import annotations

from html import escape

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


def _bar(value: float | None, area: float | None) -> str:
    if value is None:
        return "n/a"
    tick = "" if area is None else f'<span class="tick" style="left:{area * 100:.1f}%"></span>'
    return (f'<div class="bar"><span class="fill" style="width:{value * 100:.1f}%"></span>{tick}</div>'
            f'<span class="num">{fmt_share(value)}</span>')


def _summary_table(summary: dict, caption: str) -> str:
    if not summary:
        return ""
    head = "".join(f"<th>{escape(REGION_LABELS[r])}</th>" for r in REGIONS)
    rows = []
    for cls, stats in summary.items():
        cells = "".join(
            f'<td title="{escape(_interval(stats["regions"][r]))}">{_bar(stats["regions"][r]["mean"], stats["regions"][r]["area"])}'
            f'<div class="ci">{escape(_interval(stats["regions"][r]))}</div></td>' for r in REGIONS
        )
        rows.append(f"<tr><th>{escape(cls)}<div class='ci'>{stats['n']} images, {stats['n_patients']} patients</div></th>{cells}</tr>")
    return f"<table><caption>{escape(caption)}</caption><tr><th>class</th>{head}</tr>{''.join(rows)}</table>"


def render_html(data: dict) -> str:
    """The whole report as one HTML string."""
    markers = {}
    for im in data["images"]:
        for m in im["markers"]:
            markers[m["kind"]] = markers.get(m["kind"], 0) + 1
    with_markers = sum(1 for im in data["images"] if im["markers"])
    lung_sources = {}
    for im in data["images"]:
        lung_sources[im["lung_source"]] = lung_sources.get(im["lung_source"], 0) + 1
    flags = shortcut_lines(data)
    flag_html = ("".join(f'<p class="flag">{escape(line)}</p>' for line in flags) if flags else
                 "<p>No class relies on evidence outside the lungs far more than the others "
                 f"(margin {fmt_share(data['settings'].get('shortcut_margin'))}, bootstrap interval above zero).</p>")
    gallery = "".join(
        f'<figure><img src="data:image/png;base64,{f["thumbnail_png_base64"]}" alt="heatmap overlay">'
        f'<figcaption>{escape(f["file"].split("/")[-1])}<br>{fmt_share(f["outside"])} outside the lungs '
        f'(area {fmt_share(f["outside_area"])})<br>predicted {escape(f["predicted"])}'
        f'{", labelled " + escape(f["label"]) if f["label"] else ""}</figcaption></figure>'
        for f in data["flagged"]
    ) or "<p>No image put more heatmap mass outside the lungs than an even spread would.</p>"
    failures = "".join(f"<li>{escape(f['file'])}: {escape(f['error'])}</li>" for f in data["failures"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CXR Review audit: {escape(data['model'])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:13px}} caption{{text-align:left;font-weight:600;padding:.4em 0}}
td,th{{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}}
.bar{{position:relative;display:inline-block;width:90px;height:10px;background:#eee;vertical-align:middle}}
.fill{{position:absolute;left:0;top:0;bottom:0;background:#c0392b}}
.tick{{position:absolute;top:-3px;bottom:-3px;width:2px;background:#222}}
.num{{margin-left:4px}} .ci{{color:#666;font-size:11px;font-weight:normal}}
.flag{{background:#fdecea;border-left:4px solid #c0392b;padding:.5em}}
.note{{background:#fff8e1;border-left:4px solid #f0ad4e;padding:.5em}}
figure{{display:inline-block;margin:6px;width:200px;font-size:12px;vertical-align:top}} img{{max-width:192px}}
</style></head><body>
<h1>Where does {escape(data['model'])} look? Dataset audit</h1>
<p class="note">Research tool. Model scores are not diagnoses. The shares below describe where Grad-CAM places
the evidence for the predicted class; each heatmap is scaled within its own image.</p>
<p>{data['n_images']} images audited{f", {len(data['failures'])} unreadable" if data['failures'] else ""};
lung fields from {", ".join(f"{k} ({v})" for k, v in sorted(lung_sources.items()))};
burned-in text or markers found on {with_markers} images ({", ".join(f"{k}: {v}" for k, v in sorted(markers.items())) or "none"}).
Preprocessing: {"markers and border masked before the model" if data['settings'].get('mask_markers') else "as trained (no masking)"}.</p>
<h2>Shortcut check</h2>{flag_html}
<h2>Share of heatmap mass per region</h2>
<p>Each bar is the mean share over the class's images; the black tick is the region's share of the image area,
which is what a heatmap spread evenly over the film would give. Intervals are 95% bootstrap intervals
(patients resampled when patient ids are known).</p>
{_summary_table(data['summary_by_predicted'], "By predicted class")}
{_summary_table(data.get('summary_by_label') or {}, "By true class (labels from the data)")}
<h2>Images most driven by evidence outside the lungs</h2>
<p>Heatmap in colour, lung fields outlined in green, detected markers boxed in red.</p>
{gallery}
{f"<h2>Unreadable files</h2><ul>{failures}</ul>" if failures else ""}
</body></html>
"""


__all__ = ["render_html", "summary_lines", "shortcut_lines", "REGION_LABELS"]
