"""Dataset audit: where a model's heatmaps put their evidence across a whole dataset, class by class.

Run an audit on a folder or manifest (or load one saved by ``python -m cxr_core audit --json``),
see per-class shares of heatmap mass outside the lungs, on the border, in the corners and over
burned-in markers, and the images most driven by evidence outside the lungs.
"""

import base64
import json
from pathlib import Path

import streamlit as st

from cxr_core.audit import REGIONS, fmt_share, run_audit, to_json
from cxr_core.audit.report import (REGION_LABELS, confound_lines, confound_rows, render_html, shortcut_lines,
                                   subgroup_rows)
from cxr_core.audit.blinded import without_pending
from cxr_core.errors import CXRError
from cxr_core.io import server_paths
from cxr_core.io.plain_text import md_escape
from ui import common, trail
from ui import auth as ui_auth

me = ui_auth.require_page("page:audit")  # the login form, or a refusal, for anyone else

AUDIT_REPORT = "audit_report"  # the audit shown (to_json dict)
AUDIT_BY = "audit_by"          # "predicted" or "label"
AUDIT_REGION = "audit_region"  # region charted

st.title("Dataset audit")
st.caption(
    "This page shows where a model's Grad-CAM heatmaps put their evidence across a whole dataset: the share of "
    "heatmap mass outside the lung fields, on the outer border, in each corner and over burned-in text or side "
    "markers, per class, and the images most driven by evidence outside the lungs. A class that relies on evidence "
    "outside the lungs far more than the others suggests a shortcut (hospital, age, markers) rather than lung findings. "
    "Model scores are not diagnoses."
)


@st.cache_resource(show_spinner="Loading the lung-field model (once per server)...")
def lung_estimator():
    from cxr_core.models.lungs import LungEstimator

    return LungEstimator.load()


def region_figure(summary: dict, region: str):
    """Bars of the mean share per class with 95 % intervals, and the even-spread share as a marker."""
    import plotly.graph_objects as go

    classes = list(summary)
    stats = [summary[c]["regions"][region] for c in classes]
    mean = [s["mean"] or 0 for s in stats]
    fig = go.Figure()
    fig.add_bar(
        x=classes, y=mean, name="heatmap mass share", marker_color="#c0392b",
        error_y={"type": "data", "symmetric": False,
                 "array": [(s["high"] or 0) - (s["mean"] or 0) for s in stats],
                 "arrayminus": [(s["mean"] or 0) - (s["low"] or 0) for s in stats]},
        hovertemplate="%{x}: %{y:.0%}<extra></extra>",
    )
    fig.add_scatter(x=classes, y=[s["area"] or 0 for s in stats], mode="markers", name="even spread (area share)",
                    marker={"symbol": "line-ew-open", "size": 40, "color": "#222", "line": {"width": 3}},
                    hovertemplate="%{x}: an even spread gives %{y:.0%}<extra></extra>")
    fig.update_layout(yaxis={"tickformat": ".0%", "range": [0, 1], "title": f"share {REGION_LABELS[region]}"},
                      height=340, margin={"t": 30, "b": 10}, legend={"orientation": "h", "y": -0.15})
    return fig


def run_form() -> None:
    ready = common.ready_models(common.registry())
    if not ready:
        st.info("No ready model is registered; `make demo-model` builds the demo model.")
        return
    with st.form("audit_run"):
        names = [e.name for e in ready]
        name = st.selectbox("Model", names)
        data = st.text_input("Data: a manifest CSV, a folder with manifest.csv, class folders, or a folder of images",
                             placeholder="/path/to/dataset", help="Only " + server_paths.roots_text() + ".")
        masks = st.text_input("Expert lung masks folder (optional; masks named <image stem>[_*].png)")
        cols = st.columns(3)
        limit = cols[0].number_input("Images (0 = all)", min_value=0, value=0, step=50)
        batch = cols[1].number_input("Batch size", min_value=1, max_value=256, value=16)
        clean = cols[2].toggle("Mask markers and border first", help="the --mask-markers preprocessing")
        probe = st.toggle("Look for confounds in the manifest's extra columns (source, age group...)", value=True,
                          help="subgroup accuracy and AUC, and a probe of the model's features for each column")
        go = st.form_submit_button("Run the audit", type="primary")
    if not go:
        return
    if not data.strip():
        st.error("Give a data folder or manifest to audit.")
        return
    from cxr_core.cli.commands.audit import items_from

    entry = next(e for e in ready if e.name == name)
    try:
        root = server_paths.allowed_path(data)
        mask_dir = server_paths.allowed_path(masks) if masks.strip() else None
        try:
            items = items_from(root, int(limit) or None)
        except CXRError as exc:  # a manifest's reader quotes what it found: never shown for a server file
            raise CXRError(f"{data.strip()!r} is {server_paths.unreadable_reason(exc)}") from exc
        server_paths.check_all(item.file for item in items)  # a manifest may name files outside the roots
        engine, reason = common.cam_engine(common.weights_key(), entry.name, entry.card.sha256)
        if engine is None:
            st.error(reason)
            return
        bar = st.progress(0.0, text="Auditing...")
        report = run_audit(
            engine, items, lung_masks=mask_dir,
            lung_estimator=None if mask_dir else lung_estimator(), batch_size=int(batch),
            mask_markers_first=clean, model_name=entry.name, loaded=common.loaded_model(entry),
            progress=lambda done, total: bar.progress(done / max(total, 1), text=f"{done} of {total} images audited"),
        )
        if probe and any(im.label for im in report.images):
            from cxr_core.audit.confounds import add_to_report

            with st.spinner("Probing the model's features for confounds..."):
                add_to_report(report, common.loaded_model(entry), items)
    except CXRError as exc:
        st.error(str(exc))
        return
    st.session_state[AUDIT_REPORT] = to_json(report)


def load_form() -> None:
    upload = st.file_uploader("Audit JSON (from `python -m cxr_core audit --json FILE`)", type=["json"])
    if upload is None:
        return
    from cxr_core.audit import from_json

    try:
        data = json.loads(upload.getvalue())
        from_json(data)  # validates
    except (ValueError, CXRError) as exc:
        st.error(f"{upload.name} is not an audit file CXR Review can read: {exc}")
        return
    st.session_state[AUDIT_REPORT] = data


run_tab, load_tab = st.tabs(["Run an audit", "Load an audit"])
with run_tab:
    run_form()
with load_tab:
    load_form()

data = st.session_state.get(AUDIT_REPORT)
if not data:
    st.stop()
# The blind gate for a whole audit: films the logged-in user still reads blind leave every chart, table,
# caption and download below (cxr_core.safety.blinding.hidden_images, the one gate). Fails closed.
from sqlalchemy.exc import SQLAlchemyError

from cxr_core.safety import blinding

try:
    with common.reading() as s:
        seen = without_pending(data, blinding.hidden_images(s, me.id))
except (CXRError, SQLAlchemyError) as err:
    st.error(f"Nothing is shown: the annotation database could not be checked for blind readings ({err}).",
             icon=":material/visibility_off:")
    st.stop()
data = seen.data
if seen.hidden:
    st.info(f"{seen.hidden} film(s) of this audit are left out of everything on this page and its downloads: they "
            "are pending in your blind reading session(s)"
            + (f" ({seen.unchecked} of them carry no pixel hash, so they cannot be told apart from a pending film)"
               if seen.unchecked else "")
            + ". Their model output stays hidden until you submit your reading.", icon=":material/visibility_off:")
if not data["images"]:
    st.stop()
trail.output_shown("audit", [im.get("sha256", "") for im in data["images"]],
                   f"{data['model'] or 'model'}: predicted classes and heatmap shares")

st.header(f"{data['model'] or 'Model'}: {data['n_images']} images")  # a model name is [A-Za-z0-9._-]


def confound_section() -> None:
    """The shortcut probe per manifest column and the subgroup table (accuracy and AUC within each class)."""
    st.subheader("Confounds and subgroups")
    st.caption("Each extra column of the manifest is a subgroup. Feature AUROC: how well a logistic regression on the "
               "model's penultimate features predicts the column (cross-validated, folds grouped by patient). "
               "Cramér's V: how closely the column goes with the label. A column is flagged when both are high and "
               "accuracy within a class differs between its values. Small groups are anecdotes; counts are shown.")
    st.dataframe(confound_rows(data), hide_index=True, key="audit_confounds")
    st.dataframe(subgroup_rows(data), hide_index=True, key="audit_subgroups")


confounds_found = confound_lines(data)
for line in confounds_found:  # first: a confound is what the heatmap shares below cannot show
    st.error(md_escape(line), icon=":material/warning:")
if confounds_found:
    confound_section()
flags = shortcut_lines(data)
for line in flags:
    st.error(line, icon=":material/warning:")
if not flags:
    st.success("No class relies on evidence outside the lungs far more than the others.", icon=":material/check:")
if data["failures"]:
    with st.expander(f"{len(data['failures'])} files could not be read"):
        st.dataframe(data["failures"], hide_index=True)
refused = [r for r in data.get("refused", []) if not r.get("overridden")]
if refused:
    with st.expander(f"Not analysed ({len(refused)}): films that do not look like a frontal chest X-ray",
                     icon=":material/block:"):
        st.caption("The model was not run on these films; they are in no number on this page.")
        st.dataframe([{"file": Path(r["file"]).name, "reasons": " | ".join(r["reasons"]),
                       "details": " | ".join(d for d in r.get("details", []) if d)} for r in refused],
                     hide_index=True)

options = {"predicted": "Predicted class"} | ({"label": "True class"} if data["summary_by_label"] else {})
cols = st.columns(2)
by = cols[0].segmented_control("Group by", list(options), format_func=options.get, default="predicted", key=AUDIT_BY)
region = cols[1].selectbox("Region", REGIONS, index=REGIONS.index("outside_lungs"), format_func=REGION_LABELS.get,
                          key=AUDIT_REGION)
summary = data["summary_by_label" if by == "label" else "summary_by_predicted"]  # None (deselected) -> predicted
st.plotly_chart(region_figure(summary, region or "outside_lungs"), width="stretch")
st.caption("Bars: mean share of each image's heatmap mass, with 95% bootstrap intervals (patients resampled when "
           "known). Black line: the region's share of the image area, i.e. what an evenly spread heatmap would give.")
st.dataframe(
    [{"class": c, "images": s["n"], "patients": s["n_patients"],
      **{REGION_LABELS[r]: fmt_share(s["regions"][r]["mean"]) for r in REGIONS}} for c, s in summary.items()],
    hide_index=True,
)

st.subheader("Images most driven by evidence outside the lungs")
st.caption("Heatmap in colour, lung fields outlined in green, detected markers boxed in red.")
if not data["flagged"]:
    st.info("No image put more heatmap mass outside the lungs than an even spread would.")
grid = st.columns(4)
for i, f in enumerate(data["flagged"]):
    with grid[i % 4]:
        allowed, reason = common.model_output_allowed(f["sha256"]) if f.get("sha256") else (True, "")
        if allowed:
            st.image(base64.b64decode(f["thumbnail_png_base64"]), width="stretch")
        else:
            st.caption(reason)
        st.caption(f"{md_escape(Path(f['file']).name)}: {fmt_share(f['outside'])} outside the lungs (area "
                   f"{fmt_share(f['outside_area'])}); predicted {f['predicted']}"
                   + (f", labelled {f['label']}" if f["label"] else ""))

if data.get("confounds") and not confounds_found:
    st.success("No manifest column looks like a confound: " + ", ".join(md_escape(c["column"])
               for c in data["confounds"]) + " checked.", icon=":material/check:")
    confound_section()

with st.expander("Every image"):
    st.dataframe(
        [{"file": Path(im["file"]).name, "label": im["label"], "predicted": im["predicted"],
          "outside lungs": im["shares"]["outside_lungs"], "border": im["shares"]["border"],
          "markers": im["shares"]["markers"], "marks found": len(im["markers"]), "lungs from": im["lung_source"]}
         for im in data["images"]],
        hide_index=True,
    )
cols = st.columns(2)
what = f"dataset audit of {data['model'] or 'a model'}, {data['n_images']} films"
trail.download("Download JSON", json.dumps(data), "audit.json", "application/json", action="export:audit",
               detail=what, key="audit_json", container=cols[0])
trail.download("Download HTML report", render_html(data), "audit.html", "text/html", action="export:audit",
               detail=what, key="audit_html", container=cols[1])
