"""Review X-rays: upload films or pick a sample, choose a model, read its scores and where it looked."""

import json
from pathlib import Path

import streamlit as st

from cxr_core.errors import CXRError
from cxr_core.explain.overlay import COLORMAPS, ZOOMS
from cxr_core.io.csv_safe import dict_rows_csv
from cxr_core.io.film_facts import image_facts
from cxr_core.models.status import missing_architectures
from cxr_core.models.zoo import DEFAULT_CLASSES
from ui import common, review
from ui.figures import cached_score_bars
from cxr_core.io.plain_text import md_escape
from ui import auth as ui_auth
from ui import trail

ui_auth.require_page("page:review")  # the login form, or a refusal, for anyone else

st.title("Review X-rays")
st.caption(
    "This page shows, for each chest X-ray you upload, the scores a classifier gives to each class and a "
    "Grad-CAM heatmap of the regions that raised the score of one class. Images that do not look like a frontal "
    "chest X-ray are not analysed, and the page says why. Several films at once get a summary table, one row a "
    "film. Model scores are not diagnoses."
)

# --- the images -----------------------------------------------------------------------------------
up_col, sample_col = st.columns([3, 2], gap="large")
with up_col:
    uploads = st.file_uploader(
        "Chest X-rays (PNG, JPEG, TIFF or DICOM); several at once", accept_multiple_files=True,
        key=review.REVIEW_UPLOADS, max_upload_size=common.FILM_UPLOAD_MB,
    )
with sample_col:
    samples = {s["file"]: s for s in common.list_samples()}
    if samples:
        chosen = st.multiselect(
            "Or try a bundled sample", list(samples), key=review.REVIEW_SAMPLES, persist_state="session",
            format_func=lambda f: f"{f} (labelled {samples[f].get('label', '?')})",
            help="Real, openly licensed chest X-rays from the demo model's test split; "
                 "the source shows in the image details.",
        )
    else:
        chosen = []
        st.caption("No bundled samples are installed (data/samples/samples.json).")

items = [common.upload_item(u) for u in uploads or []] + [common.sample_item(samples[f]) for f in chosen]
if not items:
    st.info("Upload one or more chest X-rays, or pick a bundled sample, to begin.")
    st.stop()

good = [i for i in items if i.xray is not None]
st.subheader(f"Images ({len(good)} readable of {len(items)})")
per_row = 6
for start in range(0, len(good), per_row):
    for col, item in zip(st.columns(per_row), good[start:start + per_row]):
        col.image(item.thumb, caption=item.name)
for item in items:
    if item.error:
        st.error(f"**{md_escape(item.name)}** could not be read: {item.error}", icon=":material/broken_image:")
if not good:
    st.stop()

# --- the model ------------------------------------------------------------------------------------
entries = common.registry()
ready = common.ready_models(entries)
unusable = [e for e in entries if not e.ready]
missing = missing_architectures(entries)
model_col, other_col = st.columns([3, 2], gap="large")
with other_col, st.expander(f"Models not installed or not usable ({len(unusable) + len(missing)})"):
    for e in unusable:
        st.markdown(f"- **{e.name}**: {e.status}. {e.message}")
    for display_name, how in missing:
        st.markdown(f"- **{display_name}**: not installed; {how}")
    if not unusable and not missing:
        st.caption("Every zoo architecture has an installed model.")
if not ready:
    model_col.error("No model is installed. Run `make demo-model` for the demo model, or see the Models page "
                    "for how to train or import one.")
    st.stop()
by_name = {e.name: e for e in ready}
if st.session_state.get(review.REVIEW_MODEL) not in by_name:
    st.session_state[review.REVIEW_MODEL] = ready[0].name  # the registry lists demo models first


def _model_label(name: str) -> str:
    card = by_name[name].card
    return f"{name}: {card.architecture}, {len(card.classes)} classes" + (" (demo)" if card.demo else "")


entry = by_name[model_col.selectbox("Model", list(by_name), key=review.REVIEW_MODEL, persist_state="session",
                                   format_func=_model_label)]
card = entry.card

# --- a batch: one row a film ----------------------------------------------------------------------
if len(good) > 1:
    st.subheader(f"All {len(good)} films, read by {entry.name}")
    rows = review.review_summary(good, entry)
    st.dataframe(
        [r.page_row() for r in rows], hide_index=True, width="stretch", key="review_summary_table",
        column_config={"Score (%)": st.column_config.NumberColumn(format="%.1f%%"),
                       "Warning details": st.column_config.TextColumn(width="large")},
    )
    trail.output_shown("review summary", [i.xray.sha256 for i, r in zip(good, rows) if r.score is not None],
                       f"{entry.name}: top score")
    trail.download("Download summary (CSV)", dict_rows_csv([r.csv_row(entry.name) for r in rows]),
                   f"review-summary.{entry.name}.csv", "text/csv", action=None,
                   detail=f"batch summary of {len(rows)} film(s) by {entry.name}", key="review_summary_csv")
    st.caption("Top model score per film: not a diagnosis. Refused: screened out as not looking like a frontal "
               "chest X-ray, so no score (an expert override on the film's own view below is not carried here); "
               "not checked: the model's output is hidden for this film or the model could not run. The CSV names "
               "each film by a code made from its pixels (film-…, the first column here), never by its file name, "
               "which may identify a patient.")
    skipped = len(items) - len(good)
    if skipped:
        st.caption(f"{skipped} file{'s' if skipped > 1 else ''} could not be read (see above) and "
                   f"{'are' if skipped > 1 else 'is'} not in this table.")

keys = [i.key for i in good]
if st.session_state.get(review.REVIEW_SELECTED) not in keys:
    st.session_state[review.REVIEW_SELECTED] = keys[0]
by_key = {i.key: i for i in good}
selected = st.radio("Image to review", keys, key=review.REVIEW_SELECTED, format_func=lambda k: by_key[k].name,
                    horizontal=True)
item = by_key[selected]

# --- this image, this model -----------------------------------------------------------------------
st.divider()
st.subheader(f"{md_escape(item.name)}, read by {entry.name}")
notes = review.review_warnings(item, entry)
if notes:
    with st.expander(f"Warnings ({len(notes)})", icon=":material/warning:"):
        st.markdown("\n".join(f"- {note}" for note in notes))

view_col, side_col = st.columns([5, 2], gap="medium")
with side_col:
    scores_box = st.container()
    st.markdown("**Heatmap settings**")
    target_key = review.review_target_key(entry.name)
    target_choice = st.selectbox(
        "Heatmap explains", [review.PREDICTED, *card.classes], key=target_key, persist_state="session",
        format_func=lambda c: "the top-scoring class" if c == review.PREDICTED else c,
        help="Grad-CAM shows the regions that raised the model's score for this class.",
    )
    method = st.radio("Method", list(common.METHOD_LABELS), key=review.REVIEW_METHOD, persist_state="session",
                      format_func=common.METHOD_LABELS.get, horizontal=True)
    if st.session_state.get(review.REVIEW_VIEW) not in review.VIEWS:
        st.session_state[review.REVIEW_VIEW] = review.VIEWS[0]
    view = st.radio("View", review.VIEWS, key=review.REVIEW_VIEW, persist_state="session", horizontal=True)
    outline = view != "Original" and st.checkbox(
        "Outline the hot region (Otsu)", key=review.REVIEW_OUTLINE, persist_state="session",
        help="Draws the edge of the region Otsu's threshold cuts from the heatmap, the region the agreement "
             "page compares with expert marks. Set the opacity to 0 to see it on the plain film.")
    opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key=review.REVIEW_OPACITY, persist_state="session",
                        help="How strongly the hottest region is tinted; where the heatmap is low the film "
                             "is never tinted.")
    colormap = st.selectbox("Colour map", COLORMAPS, key=review.REVIEW_COLORMAP, persist_state="session")

allowed, reason = common.model_output_allowed(item.xray.sha256, item.xray.pixels)
# The one analysis path (cxr_core.analysis): an input that does not look like a frontal chest film gets no
# scores and no heatmap, unless an expert overrides the refusal (logged, and recorded in the downloaded JSON).
target = None if target_choice == review.PREDICTED else target_choice
ood, refused, override = None, False, False
try:  # a detector that does not match its card, or a file that passes its checksum but does not load
    analysis = common.analyse(entry, item, method, target) if allowed else None
    if analysis is not None and analysis.refused:
        with scores_box:
            st.error(review.refusal_text(analysis), icon=":material/block:")
            override = st.checkbox("Show the model's output anyway (expert override; this is logged)",
                                   key=review.review_override_key(item.key))
        if override:
            analysis = common.analyse(entry, item, method, target, allow_ood=True)
            ood = review.ood_override(entry, item, analysis)
        else:
            refused, allowed, reason, analysis = True, False, review.refusal_text(analysis), None
except CXRError as exc:
    st.error(f"{entry.name} could not be run: {exc}", icon=":material/error:")
    st.stop()
if analysis is not None and ood is None:
    ood = analysis.film.screening_record()

with scores_box:
    if analysis is None:
        if not refused:
            st.info(reason, icon=":material/visibility_off:")
    else:
        if override:
            st.warning("Expert override: these scores are for an input refused as not a frontal chest X-ray.",
                       icon=":material/warning:")
        trail.output_shown("review", item.xray.sha256, f"{entry.name}: scores and {method} heatmap")
        pred = analysis.prediction
        st.markdown(f"Top model score: **{pred.predicted}** ({pred.confidence:.1%})")
        st.plotly_chart(cached_score_bars(pred.classes, pred.probabilities, title="Model scores for this image"),
                        width="stretch", key="review_scores_chart", config={"displayModeBar": False})
        st.caption(f"Scores by {analysis.engine}.", help="The engine and number precision that ran the model "
                   "(CXR_BACKEND, CXR_OPENVINO_PRECISION); the Models page says more.")
        if pred.temperature != 1.0:
            st.caption(f"Scores are temperature-scaled (T = {pred.temperature:.2f}) so that they track how often "
                       "the model is right on its test set; they are still not probabilities of disease.")

with view_col:
    zoom_col, across_col, down_col = st.columns(3)
    zoom = zoom_col.segmented_control("Zoom", ZOOMS, key=review.REVIEW_ZOOM, default=1, required=True,
                                      persist_state="session",
                                      format_func=lambda z: "Whole film" if z == 1 else f"{z}x",
                                      help="Zoom shows a part of the film at its own resolution.") or 1
    centre = (0.5, 0.5)
    if zoom != 1:
        across = across_col.slider("Zoom centre, across (%)", 0, 100, 50, 5, key=review.REVIEW_ZOOM_COL,
                                   help="0 is the film's left edge as displayed.")
        down = down_col.slider("Zoom centre, down (%)", 0, 100, 50, 5, key=review.REVIEW_ZOOM_ROW,
                               help="0 is the film's top edge.")
        centre = (down / 100, across / 100)
    zoomed = "" if zoom == 1 else f", {zoom}x zoom"

    def picture(shown_view: str, with_outline: bool = False) -> bytes:
        return review.overlay_jpeg(item, analysis, shown_view, colormap, opacity, model=entry,
                                   outline=with_outline, zoom=zoom, centre=centre)

    cam = analysis.cam if analysis is not None else None
    if analysis is None:
        st.image(picture("Original"), width="stretch",
                 caption=f"{item.name} (" + ("not analysed" if refused else "model output hidden") + f"){zoomed}")
    elif cam is None:
        st.warning(analysis.cam_error, icon=":material/block:")
        st.image(picture("Original"), caption=f"{item.name} (no heatmap){zoomed}", width="stretch")
    elif cam.all_zero:
        st.info(f"No positive evidence for {cam.target}: the {common.METHOD_LABELS[method]} map is empty for this "
                "image, so there is no heatmap to show.", icon=":material/blur_off:")
        st.image(picture("Original"), caption=f"{item.name} (no heatmap){zoomed}", width="stretch")
    else:
        label = f"{common.METHOD_LABELS[method]} for {cam.target}"
        shown = f"{label} overlay" + (" with the Otsu outline" if outline else "") + zoomed
        if view == "Side by side":
            left, right = st.columns(2)
            left.image(picture("Original"), caption=item.name + zoomed, width="stretch")
            right.image(picture("Overlay", outline), caption=shown, width="stretch")
        elif view == "Overlay":
            st.image(picture("Overlay", outline), caption=shown, width="stretch")
        else:
            st.image(picture("Original"), caption=f"{item.name} (heatmap hidden){zoomed}", width="stretch")
        if view != "Original":
            st.image(review.legend_png(768, colormap), width="stretch",
                     caption="Heatmap colours, low to high, relative within this film: the hottest spot is always the "
                             "top colour, however weak, and the film is left untinted where the map is low. Do not "
                             "compare colours between films or models.")

with side_col:
    with st.expander("DICOM details (non-identifying)" if item.xray.source_format == "dicom" else "Image details",
                     expanded=item.xray.source_format == "dicom"):
        facts = image_facts(item.xray, item.name, item.attribution)
        st.table({"Fact": [k for k, _ in facts], "Value": [v for _, v in facts]}, hide_header=True)
    if analysis is not None:
        stem = Path(item.name).stem
        record = review.result_record(item, entry, analysis, ood)
        trail.download("Download result (JSON)", json.dumps(record, indent=2), f"{stem}.{entry.name}.json",
                       "application/json", action=None, detail=f"scores of {entry.name}", film_sha=item.xray.sha256,
                       key="review_result_json")
        if cam is not None and not cam.all_zero:
            trail.download(
                "Download overlay (PNG, full size)",
                review.full_size_overlay_png(item, analysis, colormap, opacity, outline, model=entry.name),
                f"{stem}.{entry.name}.{method}.overlay.png", "image/png", action=None,
                detail=f"{method} overlay of {entry.name}", film_sha=item.xray.sha256, key="review_overlay_png",
            )

# --- every installed model on this image ----------------------------------------------------------
def _compare_cell(other) -> None:
    """One model's scores and heatmap for the selected image, in its own bordered cell."""
    st.markdown(f"**{other.name}** ({other.card.architecture}" + (", demo)" if other.card.demo else ")"))
    missing_classes = [c for c in DEFAULT_CLASSES if c not in other.card.classes]
    if missing_classes:
        st.caption(f"No output for {', '.join(missing_classes)}.")
    try:
        result = common.analyse(other, item, method, None)
        if result.refused and not override:
            st.error(review.refusal_text(result), icon=":material/block:")
            return
        if result.refused:
            result = common.analyse(other, item, method, None, allow_ood=True)
            review.ood_override(other, item, result)
    except CXRError as exc:
        st.error(f"{other.name} could not be run: {exc}", icon=":material/error:")
        return
    trail.output_shown("review compare", item.xray.sha256, f"{other.name}: scores and {method} heatmap")
    st.plotly_chart(cached_score_bars(result.prediction.classes, result.prediction.probabilities,
                                      title=f"Model scores: {other.name}", height=220),
                    width="stretch", key=f"review_compare_chart::{other.name}", config={"displayModeBar": False})
    st.caption(f"Scores by {result.engine}.")
    if result.cam is None:
        st.warning(result.cam_error, icon=":material/block:")
    elif result.cam.all_zero:
        st.info(f"No positive evidence for {result.cam.target}.", icon=":material/blur_off:")
    else:
        st.image(review.overlay_jpeg(item, result, "Overlay", colormap, opacity, model=other),
                 caption=f"{other.name}: {common.METHOD_LABELS[method]} for {result.cam.target}")


st.divider()
if st.toggle("Compare all installed models on this image", key=review.REVIEW_COMPARE, persist_state="session",
             help=f"Runs each of the {len(ready)} installed models with {common.METHOD_LABELS[method]} "
                  "on the top class."):
    if not allowed:
        st.info(reason, icon=":material/visibility_off:")
    else:
        per_row = min(3, len(ready))
        for start in range(0, len(ready), per_row):
            for col, other in zip(st.columns(per_row), ready[start:start + per_row]):
                with col, st.container(border=True):
                    _compare_cell(other)
        st.caption("Each heatmap is scaled within its own model and image: compare where models look, not how hot.")
