"""Annotate X-rays: an expert marks where they see disease on each film of their session, blind to the model."""

import streamlit as st
from streamlit_drawable_canvas import st_canvas

from cxr_core import annotation as ann
from cxr_core import storage
from cxr_core.annotation.canvas_view import REGIONS, ZOOMS, to_view
from cxr_core.errors import CXRError
from cxr_core.annotation.reading import Answers
from cxr_core.models.zoo import DEFAULT_CLASSES
from ui import annotate as ua
from ui import common
from ui.figures import score_bars
from ui.viewport import viewport
from ui import auth as ui_auth
from ui import trail
from cxr_core.io.plain_text import md_escape

me = ui_auth.require_page("page:annotate")  # the login form, or a refusal, for anyone else

st.title("Annotate X-rays", help=(
    "Your reading session's chest X-rays, one by one: outline where you see disease, name each finding, give your "
    "diagnosis and confidence, or exclude a film that is not a chest film or not readable. Your marks are saved as "
    "a draft after every change."))
st.caption("Mark and answer each film of your session. In a blind session no model score or heatmap for a film is "
           "shown to you, on any page, until you have submitted your reading of it. Model scores are not diagnoses.")

# --- who (the logged-in user: users are the readers), which session, which film --------------------
with common.reading() as s:
    reader = storage.get_reader(s, me.name)
    sessions = {x.name: x for x in storage.list_sessions(s, reader_id=reader.id)}
if not sessions:
    st.info(f"{md_escape(me.name)}, you have no reading sessions yet; an administrator assigns them on the "
            "**Reading sessions** page.")
    st.stop()
session_name = st.sidebar.selectbox("Reading session", list(sessions), key=ua.ANNOTATE_SESSION,
                                     bind="query-params", persist_state="session",
                                     format_func=lambda n: n + (" (blind)" if sessions[n].blind else ""))
session = sessions[session_name]

# Store what every film's canvas and answers sent first, whichever film this run shows: a mark that
# reached the server together with a click elsewhere is never dropped.
for line in ua.flush_all():
    st.error(line, icon=":material/error:")

with common.reading() as s:
    queue = storage.reader_queue(s, session.id, reader.id)
position = ua.open_film(session.id, reader.id, queue)
entry = queue.entries[position]
nav = (session.id, reader.id)
# The film, and beside it everything else: nothing but the title stands above the film.
canvas_col, side_col = st.columns([2.2, 1.8], gap="small")
with canvas_col:
    vp = viewport("annotate_viewport")  # the window's size and where the canvas starts
prev_col, next_col = side_col.columns(2)
prev_col.button("Previous film", key="annotate_previous", icon=":material/chevron_left:", width="stretch",
                on_click=ua.go, args=(*nav, queue.total, -1), disabled=position == 0, shortcut="PageUp",
                help="The film before this one in your order (Page Up). Your marks are kept as a draft.")
next_col.button("Next film", key="annotate_next", icon=":material/chevron_right:", width="stretch",
                on_click=ua.go, args=(*nav, queue.total, 1), disabled=position == queue.total - 1,
                shortcut="PageDown", help="The film after this one in your order (Page Down).")
film_col, status_col = side_col.columns([1, 1.2], vertical_alignment="bottom")
film_col.selectbox("Film", [e.position for e in queue.entries], key=ua.annotate_image_key(*nav),
                   format_func=lambda p: f"Film {p + 1} of {queue.total}", on_change=ua.picked, args=nav,
                   help="Films in your own order. Whatever you drew on a film stays saved when you move on.")
status_col.markdown(f"Film {position + 1}: **{ua.entry_status(entry)}**")
side_col.progress(queue.progress, text=f"Your progress in {md_escape(session.name)}: {queue.progress_text}")
flash = st.session_state.pop(ua.ANNOTATE_FLASH, None)  # shown beside the canvas: nothing above it moves
problem = st.session_state.pop(ua.ANNOTATE_ERROR, None)  # a save from a button that did not happen
if queue.next_pending is None:
    flash = (flash + " " if flash else "") + (f"You have read every film of this session ({queue.total}). Thank "
                                              "you. You can look back at any of them, and revise your reading.")

item = common.stored_item(entry.image_sha)
allowed, reason = common.model_output_allowed(entry.image_sha)
view = ua.current_view()
reading_id = (session.id, reader.id, entry.image_sha)
revising: set = st.session_state.setdefault(ua.ANNOTATE_REVISING, set())
if entry.done and entry.has_draft:  # a revision was under way when the page was left: carry on with it
    revising.add(reading_id)
choices = [*DEFAULT_CLASSES, storage.UNCERTAIN]


def display_controls(col, *, with_tools: bool) -> tuple[str, str, float, float, bool]:
    """Tool and finding (when drawing), zoom, region, invert, level and window, beside the canvas."""
    tool = finding = None
    if with_tools:
        tool = col.radio("Drawing tool", list(ann.TOOLS), key=ua.ANNOTATE_TOOL, horizontal=True,
                         help="Polygon: click each corner, then click the first corner again to close it. "
                              "Freehand: hold the button and draw round the region; it is closed for you.")
        finding = col.selectbox("Finding for the next mark", list(ann.FINDINGS), key=ua.ANNOTATE_FINDING,
                                help="Each mark keeps the finding chosen when it was drawn, shown by its colour.")
    zoom_col, region_col = col.columns([1.3, 1])
    zoom_col.radio("Zoom", list(ZOOMS), key=ua.ANNOTATE_ZOOM, horizontal=True, format_func=ua.ZOOM_LABELS.get,
                   help="Magnify the film; your marks are stored in full-film pixels whatever the zoom.")
    region_col.selectbox("Zoom region", list(REGIONS), key=ua.ANNOTATE_REGION, index=list(REGIONS).index("centre"),
                         help="The part of the film shown when zoomed in.")
    level_col, window_col = col.columns(2)
    level = level_col.slider("Level (brightness)", 0.0, 1.0, 0.5, 0.01, key=ua.ANNOTATE_LEVEL,
                             help="Centre of the display window: lower makes the film brighter. Display only.")
    window = window_col.slider("Window (contrast)", 0.05, 1.0, 1.0, 0.01, key=ua.ANNOTATE_WINDOW,
                               help="Width of the display window: narrower gives more contrast. Display only.")
    invert = col.checkbox("Invert", key=ua.ANNOTATE_INVERT, help="Show the film negative. Display only.")
    return tool, finding, level, window, invert


def model_result_panel(col) -> tuple:
    """The model's scores in ``col``, and its heatmap (or None) for the canvas; only called once the gate allows it."""
    ready = common.ready_models(common.registry())
    if not ready:
        col.info("No model is installed, so there is no model result to compare with. See the Models page.")
        return None, ""
    by_name = {e.name: e for e in ready}
    model = by_name[col.selectbox("Model", list(by_name), key=ua.reading_key("model", *reading_id))]
    analysis = common.analyse(model, item, "gradcam", None)  # the one analysis path: screened first
    if analysis.refused:
        col.error(common.refusal_text(analysis), icon=":material/block:")
        return None, ""
    trail.output_shown("annotate", entry.image_sha, f"{model.name}: scores and Grad-CAM ({session.name})")
    pred = analysis.prediction
    col.plotly_chart(score_bars(pred.classes, pred.probabilities, title=f"Model scores: {model.name}", height=220),
                     width="stretch", key=ua.reading_key("scores", *reading_id), config={"displayModeBar": False})
    col.caption("The model's top class and heatmap are what an experimental classifier computed, not a diagnosis.")
    if analysis.cam is None:
        col.warning(analysis.cam_error, icon=":material/block:")
        return None, ""
    if analysis.cam.all_zero:
        col.info(f"No positive evidence for {analysis.cam.target}: the Grad-CAM map is empty.",
                 icon=":material/blur_off:")
        return None, ""
    col.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key=ua.ANNOTATE_OPACITY,
               help="Opacity where the heatmap is highest; where it is low the film shows through.")
    col.caption(f"Grad-CAM heatmap for **{analysis.cam.target}** over your marks: transparent where low, blue to red "
                "from low to high, relative within this film only.")
    return analysis.cam.heatmap, f"{model.name}:{model.card.sha256}:gradcam:{analysis.cam.target}"


def start_revision() -> None:
    """"Revise my reading": open the submitted reading for editing, and note when it was shown."""
    revising.add(reading_id)


def cancel_revision(rid) -> None:
    """"Cancel revision": leave without a new version; the revision's draft is dropped."""
    revising.discard(reading_id)
    try:
        with common.db().begin() as s:
            storage.delete_draft(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id)
    except CXRError as err:  # the revision's draft stays; nothing else changed
        st.session_state[ua.ANNOTATE_ERROR] = f"The revision's draft could not be removed: {err}"
    ua.forget(rid)


def answer_text(a) -> str:
    if a.exclusion:
        return f"Excluded: **{a.exclusion}**" + (f", confidence {a.confidence} of 5" if a.confidence else "")
    return f"Your diagnosis: **{a.diagnosis}**, confidence {a.confidence} of 5"


# --- a submitted film: the reader's marks, and the model's heatmap over them once revealed ----------
if entry.done and reading_id not in revising:
    with common.reading() as s:
        done = storage.latest_annotation(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id)
    frame = ua.frame_for(item, vp)
    with side_col:
        if flash:
            st.success(flash, icon=":material/check_circle:")
        if problem:
            st.error(problem, icon=":material/error:")
        st.markdown(f"**Your reading**, version {done.version} (submitted {done.created_at:%Y-%m-%d %H:%M} UTC)")
        st.markdown(answer_text(done))
        if done.comment:  # the reader's own words, shown as plain text (never rendered as markdown)
            st.caption("Your comment:")
            st.text(done.comment)
        else:
            st.caption("No comment.")
        if done.regions:
            st.table({"Finding": [r["label"] for r in done.regions], "Shape": [r["type"] for r in done.regions],
                      "Area (pixels)": [r["area_px"] for r in done.regions]})
        else:
            st.caption("You marked no region on this film.")
        st.button("Revise my reading", key=ua.reading_key("revise_start", *reading_id), icon=":material/edit:",
                  on_click=start_revision,
                  help="Edit your marks and answers; saving stores a new version and keeps this one.")
        heatmap, heatmap_key = None, ""
        if not allowed:
            st.info(reason, icon=":material/visibility_off:")
        elif st.toggle("Reveal the model's result for this image", key=ua.reading_key("reveal", *reading_id)):
            trail.once("reveal", entry.image_sha, f"annotate: session {session.name}", reading_id)
            heatmap, heatmap_key = model_result_panel(side_col)
        _, _, level, window, invert = display_controls(side_col, with_tools=False)
    submitted = frame.bring_in(done.canvas_json, fit=done.background_fit, width=done.canvas_width,
                               height=done.canvas_height)
    with canvas_col:
        st_canvas(background_image=ua.picture(item, view, frame, level=level, window=window, invert=invert,
                                              heatmap=heatmap, heatmap_key=heatmap_key,
                                              opacity=st.session_state.get(ua.ANNOTATE_OPACITY, 0.5), vp=vp),
                  background_image_fit="stretch",
                  initial_drawing=to_view(submitted, view, frame.width, frame.height, film_shape=frame.film_shape),
                  width=frame.width, height=frame.height, disabled=True, drawing_mode="rect",
                  key=ua.reading_key("submitted_canvas", *reading_id)
                  + f":v{done.version}:{view.zoom}:{view.x:.3f}:{view.y:.3f}:{frame.width}x{frame.height}")
        st.caption(f"Your marks as submitted (version {done.version}); read-only.")
    st.stop()

# --- a film being read (or a submitted one being revised): draw, answer, submit ------------------------
mode = "revise" if entry.done else "read"
rid = (mode, *reading_id)
done = None
# When the film was first shown for the version being made (time per case): written once per film and
# version in this browser session, in its own short write; a database that cannot record it never stops the reading.
shown = st.session_state.setdefault(ua.ANNOTATE_SHOWN, set())
if (*rid, entry.version) not in shown:
    try:
        with common.db().begin() as s:
            storage.record_shown(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id)
        shown.add((*rid, entry.version))
    except CXRError as err:
        side_col.warning(f"The time this film was first shown was not recorded: {err}", icon=":material/schedule:")
if mode == "read":
    with common.reading() as s:
        draft = storage.get_draft(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id)
        stored = dict(drawing=draft.canvas_json if draft else None, fit=draft.background_fit if draft else None,
                      width=draft.canvas_width if draft else 1, height=draft.canvas_height if draft else 1,
                      answers=Answers(None if draft and draft.exclusion else (draft.diagnosis if draft else None),
                                      draft.confidence if draft else None, draft.exclusion if draft else None,
                                      draft.comment if draft else None))
else:
    with common.reading() as s:
        done = storage.latest_annotation(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id)
        draft = storage.get_draft(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id)
        base = draft or done
        stored = dict(drawing=base.canvas_json, fit=base.background_fit, width=base.canvas_width,
                      height=base.canvas_height,
                      answers=Answers(None if base.exclusion else base.diagnosis, base.confidence, base.exclusion,
                                      draft.comment if draft else done.comment))
opened = ua.readings().get(rid)
stored_frame = ua.Frame(stored["width"], stored["height"], item.xray.shape[:2]) if stored["fit"] else None
frame = ua.frame_for(item, vp, opened.frame if opened else stored_frame)
reading = ua.open_reading(rid, frame, view, **stored)
with side_col:
    if flash:
        st.success(flash, icon=":material/check_circle:")
    if problem:
        st.error(problem, icon=":material/error:")
    heatmap, heatmap_key = None, ""
    if not allowed:
        st.info(reason, icon=":material/visibility_off:")
    elif st.toggle("Reveal the model's result for this image", key=ua.reading_key("reveal", *reading_id)):
        trail.once("reveal", entry.image_sha, f"annotate: session {session.name}", reading_id)
        heatmap, heatmap_key = model_result_panel(side_col)  # an open (not blind) session allows it while reading
    tool, finding, level, window, invert = display_controls(side_col, with_tools=True)
with canvas_col:
    result = st_canvas(
        fill_color=ann.finding_fill(finding), stroke_width=ua.CANVAS_STROKE, stroke_color=ann.finding_color(finding),
        background_image=ua.picture(item, reading.view, reading.frame, level=level, window=window, invert=invert,
                                    heatmap=heatmap, heatmap_key=heatmap_key,
                                    opacity=st.session_state.get(ua.ANNOTATE_OPACITY, 0.5), vp=vp),
        background_image_fit="stretch", drawing_mode=ann.TOOLS[tool], initial_drawing=reading.initial,
        width=reading.frame.width, height=reading.frame.height, key=ua.canvas_key(rid, reading.generation),
    )
    reading.fresh = False
    st.caption(
        "Canvas toolbar: **Undo** and **Redo** step through your marks; **Edit** lets you move, resize or delete a "
        "selected mark; the bin resets the canvas to how it was when this view opened. Your drawing is saved as a "
        "draft after every change, and kept when you zoom, move to another film or reload. "
        + "Finding colours: " + ", ".join(f"<span style='color:{c}'>&#9632;</span> {f}"
                                          for f, c in ann.FINDINGS.items()), unsafe_allow_html=True)

try:
    reading.absorb(result.json_data)
    marks = ann.read_canvas(reading.drawing, image_shape=item.xray.shape, background_fit=reading.frame.fit)
except CXRError as err:
    marks = None
    canvas_col.error(f"The drawing cannot be measured: {err}")

with side_col:
    rows, cols = item.xray.shape[:2]
    st.caption(f"{cols} x {rows} pixels; marks are measured on the full-size film.")
    if marks is not None and marks.regions:
        st.table({"Finding": [r.finding or "(unknown colour)" for r in marks.regions],
                  "Shape": [r.kind for r in marks.regions], "Area (pixels)": [r.area_px for r in marks.regions]})
        st.caption(f"Marked: {marks.area_px} pixels, {marks.area_fraction:.1%} of the film.")
    else:
        st.caption("No region marked yet. A film without findings can be submitted without marks.")
    if mode == "read":
        st.button("Clear all marks", key=ua.reading_key("clear", *reading_id), icon=":material/delete_sweep:",
                  on_click=ua.clear, args=(rid,), help="Removes every mark, your answers and the saved draft of "
                                                       "this film.")
    excluded = st.checkbox("Exclude: not a chest film / not readable", key=ua.widget_key("exclude", rid),
                           help="Answer that this film cannot be read; it is then left out of the agreement "
                                "figures (and counted as excluded).")
    if excluded:
        st.radio("Reason for excluding", list(storage.EXCLUSION_REASONS), key=ua.widget_key("exclusion", rid),
                 horizontal=True)
    diagnosis = st.radio("Your diagnosis", choices, key=ua.widget_key("diagnosis", rid), index=None, horizontal=True,
                         disabled=excluded, help="Not needed for an excluded film.")
    confidence = st.radio("Your confidence", [1, 2, 3, 4, 5], key=ua.widget_key("confidence", rid), index=None,
                          horizontal=True, format_func=lambda c: {1: "1 (guess)", 5: "5 (certain)"}.get(c, str(c)))
    st.text_input("Comment (optional)", key=ua.widget_key("comment", rid),
                  help="Shown back with your reading and stored with it.")
    ua.answers_from_widgets(rid, reading)
    if mode == "read":
        submit = st.button("Submit reading", type="primary", icon=":material/send:",
                           key=ua.reading_key("submit", *reading_id))
    else:
        submit = st.button(f"Save as version {done.version + 1}", type="primary", icon=":material/save:",
                           key=ua.reading_key("revise", *reading_id))
        st.button("Cancel revision", key=ua.reading_key("revise_cancel", *reading_id),
                           on_click=cancel_revision, args=(rid,), help="Leave without saving a new version.")

# The draft follows every change (marks, diagnosis, confidence, exclusion).
try:
    ua.save_draft(rid, reading)
except CXRError as err:
    side_col.error(f"The draft was not saved: {err}")

if submit:
    a = reading.answers
    problems = ann.submission_problems(a.diagnosis, a.confidence, marks, exclusion=a.exclusion)
    if problems:
        side_col.error("Before submitting: " + "; ".join(problems) + ".")
        st.stop()
    answer = dict(diagnosis=a.diagnosis, confidence=a.confidence, canvas_json=reading.drawing,
                  canvas_width=reading.frame.width, canvas_height=reading.frame.height,
                  background_fit=reading.frame.fit, labels=marks.labels, comment=a.comment, exclusion=a.exclusion)
    try:
        with common.db().begin() as s:
            if mode == "read":
                storage.submit_annotation(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id,
                                          **answer)
                after = storage.reader_queue(s, session.id, reader.id)
            else:
                saved = storage.revise_annotation(s, done.id, **answer)
                storage.delete_draft(s, reader_id=reader.id, image_sha=entry.image_sha, session_id=session.id)
    except CXRError as err:
        side_col.error(f"Not saved: {err}")
        st.stop()
    ua.forget(rid, widgets=False)
    if mode == "read":
        nxt = ua.go_after_submit(session.id, reader.id, after, position)
        st.session_state[ua.ANNOTATE_FLASH] = (
            f"Film {position + 1} saved ({after.progress_text}). "
            + (f"Next: film {nxt + 1}." if nxt != position else "That was your last film.")
            + " To look back at it or reveal the model's result, pick it again in the film list.")
    else:
        revising.discard(reading_id)
        st.session_state[ua.ANNOTATE_FLASH] = f"Film {position + 1}: your revised reading is saved as version " \
                                              f"{saved.version}; version {done.version} is kept."
    st.rerun()
