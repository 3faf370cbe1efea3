"""Annotate X-rays: an expert marks where they see disease on each film of their session, blind to the model."""

import streamlit as st
from streamlit_drawable_canvas import st_canvas

import ui_state as ui
from cxr_core import annotation as ann
from cxr_core import storage
from cxr_core.errors import CXRError
from cxr_core.zoo import DEFAULT_CLASSES
from ui_figures import score_bars

st.title("Annotate X-rays")
st.caption(
    "This page shows, one by one, the chest X-rays of your reading session: you outline where you see disease, "
    "name each finding, and give your own diagnosis and confidence. In a blind session no model score or heatmap "
    "for an image is shown to you, on any page, until you have submitted your reading of it; then you may reveal "
    "the model's result next to your marks. Model scores are not diagnoses."
)

# --- who, which session --------------------------------------------------------------------------
with ui.db().begin() as s:
    reader_names = [r.name for r in storage.list_readers(s)]
if not reader_names:
    st.info("No readers yet. An administrator adds readers and reading sessions on the **Sessions** page.")
    st.stop()

who_col, session_col = st.columns(2)
name = who_col.selectbox("Who are you?", reader_names, index=None, placeholder="Choose your name",
                         key=ui.ANNOTATE_READER, bind="query-params", persist_state="session",
                         help="Your choice applies to every page: model output for images you still have to read "
                              "blind is hidden everywhere.")
if name is None:
    st.info("Choose your name to see your reading sessions.")
    st.stop()
with ui.db().begin() as s:
    reader = storage.get_reader(s, name)
    sessions = {x.name: x for x in storage.list_sessions(s, reader_id=reader.id)}
if not sessions:
    st.info(f"{name} has no reading sessions yet; an administrator assigns them on the **Sessions** page.")
    st.stop()
session_name = session_col.selectbox("Reading session", list(sessions), key=ui.ANNOTATE_SESSION,
                                     bind="query-params", persist_state="session",
                                     format_func=lambda n: n + (" (blind)" if sessions[n].blind else ""))
session = sessions[session_name]

with ui.db().begin() as s:
    queue = storage.reader_queue(s, session.id, reader.id)
st.progress(queue.progress, text=f"Your progress in {session.name}: {queue.progress_text}")
if queue.next_pending is None:
    st.success(f"You have read every image of this session ({queue.total}). Thank you. You can look back at any of "
               "them below.")

picker_key = ui.annotate_image_key(session.id, reader.id)
goto = st.session_state.pop(ui.ANNOTATE_GOTO, None)
if goto is not None or st.session_state.get(picker_key) is None:
    st.session_state[picker_key] = goto if goto is not None else (queue.next_pending or queue.entries[-1]).position


def _entry_label(position: int) -> str:
    e = queue.entries[position]
    state = "done" if e.done else ("draft saved" if e.has_draft else "to do")
    return f"Image {position + 1} of {queue.total} ({state})"


position = st.selectbox("Image (in your own order)", [e.position for e in queue.entries], key=picker_key,
                        format_func=_entry_label)
entry = queue.entries[position]
flash = st.session_state.pop(ui.ANNOTATE_FLASH, None)
if flash:
    st.success(flash, icon=":material/check_circle:")
item = ui.stored_item(entry.image_sha)
allowed, reason = ui.model_output_allowed(entry.image_sha)


def model_result_panel() -> None:
    """The model's scores and heatmap for this image; only called once the gate allows it."""
    ready = ui.ready_models(ui.registry())
    if not ready:
        st.info("No model is installed, so there is no model result to compare with. See the Models page.")
        return
    by_name = {e.name: e for e in ready}
    model_key = ui.reading_key("model", session.id, reader.id, entry.image_sha)
    model = by_name[st.selectbox("Model", list(by_name), key=model_key)]
    analysis = ui.analyse(model, item, "gradcam", None)
    pred = analysis.prediction
    st.plotly_chart(score_bars(pred.classes, pred.probabilities, title=f"Model scores: {model.name}", height=220),
                    width="stretch", key=ui.reading_key("scores", session.id, reader.id, entry.image_sha),
                    config={"displayModeBar": False})
    if analysis.cam is None:
        st.warning(analysis.cam_error, icon=":material/block:")
    elif analysis.cam.all_zero:
        st.info(f"No positive evidence for {analysis.cam.target}: the Grad-CAM map is empty.",
                icon=":material/blur_off:")
    else:
        st.image(ui.overlay_image(item, analysis, "Overlay", "turbo", 0.4),
                 caption=f"Grad-CAM heatmap for {analysis.cam.target} (relative within this image only)")
    st.caption("The model's top class and heatmap are what an experimental classifier computed, not a diagnosis.")


def reveal_toggle() -> None:
    if not allowed:
        st.info(reason, icon=":material/visibility_off:")
    elif st.toggle("Reveal the model's result for this image",
                   key=ui.reading_key("reveal", session.id, reader.id, entry.image_sha)):
        model_result_panel()


# --- a submitted image: the reader's marks, and the model once revealed ---------------------------
if entry.done:
    with ui.db().begin() as s:
        done = storage.latest_annotation(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id)
    marks_col, side_col = st.columns([2, 1], gap="small")
    with marks_col:
        st.markdown(f"**Your marks** (submitted {done.created_at:%Y-%m-%d %H:%M} UTC, version {done.version})")
        st_canvas(background_image=ui.canvas_picture(item, 0.5, 1.0), background_image_fit="contain",
                  initial_drawing=ann.initial_drawing(done.canvas_json), width=done.canvas_width,
                  height=done.canvas_height, disabled=True, drawing_mode="rect",
                  key=ui.reading_key("submitted_canvas", session.id, reader.id, entry.image_sha))
    with side_col:
        st.markdown(f"Your diagnosis: **{done.diagnosis}**, confidence {done.confidence} of 5")
        if done.regions:
            st.table({"Finding": [r["label"] for r in done.regions], "Shape": [r["type"] for r in done.regions],
                      "Area (pixels)": [r["area_px"] for r in done.regions]})
        else:
            st.caption("You marked no region on this image.")
        with st.expander("Revise my diagnosis or confidence"):
            st.caption("A submitted reading is never changed: revising stores a new version and keeps this one.")
            choices = [*DEFAULT_CLASSES, storage.UNCERTAIN]
            new_dx = st.radio("Diagnosis", choices, index=choices.index(done.diagnosis), horizontal=True,
                              key=ui.reading_key("revise_diagnosis", session.id, reader.id, entry.image_sha))
            new_conf = st.radio("Confidence", [1, 2, 3, 4, 5], index=done.confidence - 1, horizontal=True,
                                key=ui.reading_key("revise_confidence", session.id, reader.id, entry.image_sha))
            if st.button(f"Save as version {done.version + 1}",
                         key=ui.reading_key("revise", session.id, reader.id, entry.image_sha)):
                if (new_dx, new_conf) == (done.diagnosis, done.confidence):
                    st.info("Nothing changed; no new version saved.")
                else:
                    with ui.db().begin() as s:
                        storage.revise_annotation(s, done.id, diagnosis=new_dx, confidence=new_conf)
                    st.rerun()
        reveal_toggle()
    st.stop()

# --- a pending image: draw, diagnose, submit ------------------------------------------------------
drawings: dict = st.session_state.setdefault(ui.ANNOTATE_DRAWINGS, {})
reading = (session.id, reader.id, entry.image_sha)
diagnosis_key = ui.reading_key("diagnosis", *reading)
confidence_key = ui.reading_key("confidence", *reading)
state = drawings.get(reading)
if state is None:  # first time in this browser session: restore the saved draft, if any
    with ui.db().begin() as s:
        draft = storage.get_draft(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id)
        initial = ann.initial_drawing(draft.canvas_json if draft else None)
        diagnosis0, confidence0 = (draft.diagnosis, draft.confidence) if draft else (None, None)
    st.session_state.setdefault(diagnosis_key, diagnosis0)
    st.session_state.setdefault(confidence_key, confidence0)
    state = drawings[reading] = ui.DrawingState(initial, ann.drawing_key(initial, diagnosis0, confidence0))

tool_col, finding_col, level_col, window_col = st.columns([3, 3, 2, 2])
tool = tool_col.radio("Drawing tool", list(ann.TOOLS), key=ui.ANNOTATE_TOOL, horizontal=True,
                      help="Polygon: click each corner, then click the first corner again to close it. "
                           "Freehand: hold the button and draw round the region; it is closed for you.")
finding = finding_col.selectbox("Finding for the next mark", list(ann.FINDINGS), key=ui.ANNOTATE_FINDING,
                                help="Each mark keeps the finding chosen when it was drawn, shown by its colour.")
level = level_col.slider("Level (brightness)", 0.0, 1.0, 0.5, 0.01, key=ui.ANNOTATE_LEVEL,
                         help="Centre of the display window: lower makes the film brighter. Changes the display only.")
window = window_col.slider("Window (contrast)", 0.05, 1.0, 1.0, 0.01, key=ui.ANNOTATE_WINDOW,
                           help="Width of the display window: narrower gives more contrast. Changes the display only.")

canvas_col, side_col = st.columns([2, 1], gap="small")  # room for the whole canvas at 1400 px
with canvas_col:
    picture = ui.canvas_picture(item, level, window)
    result = st_canvas(
        fill_color=ann.finding_fill(finding), stroke_width=ui.CANVAS_STROKE, stroke_color=ann.finding_color(finding),
        background_image=picture, background_image_fit="contain", drawing_mode=ann.TOOLS[tool],
        initial_drawing=state.initial, width=ui.CANVAS_WIDTH, height=ui.CANVAS_HEIGHT,
        key=ui.annotate_canvas_key(*reading, state.generation),
    )
    st.caption(
        "Canvas toolbar: **Undo** and **Redo** step through your marks; **Edit** lets you move, resize or delete a "
        "selected mark; the bin resets the canvas to how it was when you opened this image. "
        "Your drawing is saved as a draft after every change."
    )
    st.caption("Finding colours: " + ", ".join(
        f"<span style='color:{c}'>&#9632;</span> {f}" for f, c in ann.FINDINGS.items()), unsafe_allow_html=True)

json_data = result.json_data or {"objects": []}
fit = result.background_fit or ann.contain_fit(picture.width, picture.height, ui.CANVAS_WIDTH, ui.CANVAS_HEIGHT)
try:
    marks = ann.read_canvas(json_data, image_shape=item.xray.shape, background_fit=fit)
except CXRError as err:
    marks = None
    canvas_col.error(f"The drawing cannot be measured: {err}")

with side_col:
    st.markdown(f"**{item.xray.shape[1]} x {item.xray.shape[0]} pixels**; marks are measured on the full-size film.")
    if marks is not None and marks.regions:
        st.table({"Finding": [r.finding or "(unknown colour)" for r in marks.regions],
                  "Shape": [r.kind for r in marks.regions], "Area (pixels)": [r.area_px for r in marks.regions]})
        st.caption(f"Marked: {marks.area_px} pixels, {marks.area_fraction:.1%} of the film.")
    else:
        st.caption("No region marked yet. An image without findings can be submitted without marks.")
    if st.button("Clear all marks", key=ui.reading_key("clear", *reading), icon=":material/delete_sweep:",
                 help="Removes every mark and the saved draft of this image."):
        with ui.db().begin() as s:
            storage.delete_draft(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id)
        drawings[reading] = ui.DrawingState({"objects": []}, ann.drawing_key([], None, None), state.generation + 1)
        st.session_state.pop(diagnosis_key, None)
        st.session_state.pop(confidence_key, None)
        st.rerun()
    choices = [*DEFAULT_CLASSES, storage.UNCERTAIN]
    diagnosis = st.radio("Your diagnosis", choices, key=diagnosis_key, index=None, horizontal=True)
    confidence = st.radio("Your confidence", [1, 2, 3, 4, 5], key=confidence_key, index=None, horizontal=True,
                          format_func=lambda c: {1: "1 (guess)", 5: "5 (certain)"}.get(c, str(c)))
    comment = st.text_input("Comment (optional)", key=ui.reading_key("comment", *reading))
    submit = st.button("Submit reading", type="primary", icon=":material/send:", key=ui.reading_key("submit", *reading))

# Save the draft whenever the marks, diagnosis or confidence changed since the last save.
now = ann.drawing_key(json_data, diagnosis, confidence)
if now != state.saved and not submit:
    with ui.db().begin() as s:
        storage.save_draft(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id,
                           **ann.draft_fields(json_data, canvas_width=ui.CANVAS_WIDTH, canvas_height=ui.CANVAS_HEIGHT,
                                              background_fit=fit, diagnosis=diagnosis, confidence=confidence))
    state.saved = now

if submit:
    problems = ann.submission_problems(diagnosis, confidence, marks)
    if problems:
        side_col.error("Before submitting: " + "; ".join(problems) + ".")
    else:
        try:
            with ui.db().begin() as s:
                storage.submit_annotation(
                    s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id, diagnosis=diagnosis,
                    confidence=confidence, canvas_json=json_data, canvas_width=ui.CANVAS_WIDTH,
                    canvas_height=ui.CANVAS_HEIGHT, background_fit=fit, labels=marks.labels, comment=comment or None,
                )
                after = storage.reader_queue(s, session.id, reader.id)
        except CXRError as err:
            side_col.error(f"Not saved: {err}")
        else:
            drawings.pop(reading, None)
            nxt = after.next_pending
            st.session_state[ui.ANNOTATE_FLASH] = (
                f"Image {position + 1} saved ({after.progress_text}). "
                + (f"Next: image {nxt.position + 1}." if nxt else "That was your last image.")
                + " To reveal the model's result for it, pick it again in the image list.")
            st.session_state[ui.ANNOTATE_GOTO] = nxt.position if nxt else position
            st.rerun()

with side_col:
    reveal_toggle()
