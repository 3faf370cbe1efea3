"""The annotate page's state: which film is open, each film's reading (its marks and answers), and the picture.

What every page shares (the database, stored films, who is logged in: :func:`ui.common.current_reader_name`)
is in :mod:`ui.common`; the rules this page enforces are in :mod:`cxr_core.annotation.reading`.
Session-state keys start with ``annotate_``.

Which film is open is a queue position in this module's own key (:func:`film_key`), set by the
picker's, "Previous film"'s and "Next film"'s callbacks and after a submission; the picker's
labels ("Film 2 of 5") never change, so a draft being saved can never move the selection
(issue 12). The position also goes into the address bar (``?film=<session>.<n>``), so a reload
stays on the film being read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from cxr_core import storage
from cxr_core.annotation.canvas_view import REGIONS, ZOOMS, View, canvas_size, view_picture
from cxr_core.errors import CXRError
from cxr_core.annotation.reading import Answers, Frame, Reading, after_submit, opening_position, step
from ui import common
from ui.common import Item
from ui.viewport import Viewport

ANNOTATE_SESSION = "annotate_session"  # session name
ANNOTATE_ERROR = "annotate_error"  # one-run message: a button's save that did not happen
ANNOTATE_SHOWN = "annotate_shown"  # (mode, session, reader, sha, version) whose first display is recorded
ANNOTATE_FLASH = "annotate_flash"  # one-run message after a submit
ANNOTATE_TOOL = "annotate_tool"
ANNOTATE_FINDING = "annotate_finding"
ANNOTATE_LEVEL = "annotate_level"
ANNOTATE_WINDOW = "annotate_window"
ANNOTATE_DRAWINGS = "annotate_drawings"  # per reading: cxr_core.annotation.reading.Reading

FILM_PARAM = "film"  # address-bar parameter: "<session id>.<film number>"
ANNOTATE_REVISING = "annotate_revising"  # set of (session, reader, image) being revised
ANNOTATE_ZOOM = "annotate_zoom"
ANNOTATE_REGION = "annotate_region"
ANNOTATE_INVERT = "annotate_invert"
ANNOTATE_OPACITY = "annotate_heatmap_opacity"
ZOOM_LABELS = {z: f"{z}x" for z in ZOOMS}
#: Canvas space assumed until the browser reports its window (and in AppTest): a 1366 x 768 screen.
DEFAULT_SPACE = (460, 360)
#: A film's canvas keeps its size unless the space for it changes by more than this (CSS pixels).
FRAME_SLACK = 40

ReadingId = tuple[str, int, int, str]  # (mode "read" or "revise", session id, reader id, image SHA)


# --- widget keys -------------------------------------------------------------------------------

#: Pen width of the annotation canvas, in CSS pixels (kept on screen whatever the zoom).
CANVAS_STROKE = 3


def reading_key(kind: str, session_id: int, reader_id: int, image_sha: str) -> str:
    """Session-state key of a per-reading widget (diagnosis, confidence, comment, reveal...)."""
    return f"annotate_{kind}::{session_id}:{reader_id}:{image_sha}"


def annotate_image_key(session_id: int, reader_id: int) -> str:
    """Key of the queue-position picker: one per reader and session, so a switch never carries a stale choice."""
    return f"annotate_image::{session_id}:{reader_id}"


def annotate_canvas_key(session_id: int, reader_id: int, image_sha: str, generation: int = 0) -> str:
    """Key of the drawing canvas for one reading; a new generation (after "Clear all marks") remounts it empty."""
    return f"annotate_canvas::{session_id}:{reader_id}:{image_sha}:{generation}"


# --- which film --------------------------------------------------------------------------------


def film_key(session_id: int, reader_id: int) -> str:
    """This page's own key of the open film's position (not a widget key)."""
    return f"annotate_film::{session_id}:{reader_id}"


def open_film(session_id: int, reader_id: int, queue: storage.ReaderQueue) -> int:
    """The position of the film to show, set once per browser session from the address bar or the next to read."""
    key = film_key(session_id, reader_id)
    if key not in st.session_state:
        wanted = None
        raw = st.query_params.get(FILM_PARAM, "")
        sid, _, number = raw.partition(".")
        if sid == str(session_id) and number.isdigit():
            wanted = int(number) - 1
        pending = queue.next_pending.position if queue.next_pending else None
        st.session_state[key] = opening_position(queue.total, wanted, pending)
    position = min(max(int(st.session_state[key]), 0), queue.total - 1)
    st.session_state[key] = position
    picker = annotate_image_key(session_id, reader_id)
    if st.session_state.get(picker) != position:
        st.session_state[picker] = position  # before the picker is drawn in this run: allowed
    if st.query_params.get(FILM_PARAM) != f"{session_id}.{position + 1}":
        st.query_params[FILM_PARAM] = f"{session_id}.{position + 1}"
    return position


def picked(session_id: int, reader_id: int) -> None:
    """The picker's callback: its value (a position) becomes the open film."""
    value = st.session_state.get(annotate_image_key(session_id, reader_id))
    if value is not None:
        st.session_state[film_key(session_id, reader_id)] = int(value)


def go(session_id: int, reader_id: int, total: int, delta: int) -> None:
    """"Previous film" / "Next film": move the open film by ``delta`` when there is one there."""
    key = film_key(session_id, reader_id)
    target = step(total, int(st.session_state.get(key, 0)), delta)
    if target is not None:
        st.session_state[key] = target


def go_after_submit(session_id: int, reader_id: int, queue: storage.ReaderQueue, position: int) -> int:
    """Open the next film still to read after ``position`` (``queue`` read after the submission)."""
    target = after_submit([e.done for e in queue.entries], position)
    st.session_state[film_key(session_id, reader_id)] = target
    return target


def entry_status(entry: storage.QueueEntry) -> str:
    """What the reader has done with a film, shown beside the picker (never in its options)."""
    if entry.done:
        return f"excluded (version {entry.version})" if entry.excluded else f"submitted (version {entry.version})"
    return "draft saved" if entry.has_draft else "to do"


# --- readings ----------------------------------------------------------------------------------


def readings() -> dict[ReadingId, Reading]:
    """Every film this browser session has opened for drawing, by (mode, session, reader, image)."""
    return st.session_state.setdefault(ANNOTATE_DRAWINGS, {})


def widget_key(kind: str, rid: ReadingId) -> str:
    """Key of a per-reading widget; a revision's widgets have their own ("revise_diagnosis", ...)."""
    mode, session_id, reader_id, sha = rid
    return reading_key(kind if mode == "read" else f"revise_{kind}", session_id, reader_id, sha)


def canvas_key(rid: ReadingId, generation: int) -> str:
    mode, session_id, reader_id, sha = rid
    if mode == "read":
        return annotate_canvas_key(session_id, reader_id, sha, generation)
    return f"annotate_revise_canvas::{session_id}:{reader_id}:{sha}:{generation}"


def canvas_report(rid: ReadingId, reading: Reading) -> Any | None:
    """What the mounted canvas last sent (its ``json_data``), or None when it is not mounted now."""
    value = st.session_state.get(canvas_key(rid, reading.generation))
    if not isinstance(value, dict):
        return None
    drawing = value.get("drawing") or {}
    return drawing.get("raw") if isinstance(drawing, dict) else None


def restore_answers(rid: ReadingId, reading: Reading) -> None:
    """Put the reading's answers back into its widgets when they were not drawn last run (another film was)."""
    a = reading.answers
    values = {"diagnosis": a.diagnosis, "confidence": a.confidence, "comment": a.comment or "",
              "exclude": a.exclusion is not None, "exclusion": a.exclusion or storage.EXCLUSION_REASONS[0]}
    for kind, value in values.items():
        key = widget_key(kind, rid)
        if key not in st.session_state:
            st.session_state[key] = value


def answers_from_widgets(rid: ReadingId, reading: Reading) -> None:
    """Read the answer widgets' current values (when present) into the reading."""
    state = st.session_state
    a = reading.answers
    exclude = state.get(widget_key("exclude", rid), a.exclusion is not None)
    reason = state.get(widget_key("exclusion", rid), a.exclusion)
    reading.answer(
        diagnosis=state.get(widget_key("diagnosis", rid), a.diagnosis),
        confidence=state.get(widget_key("confidence", rid), a.confidence),
        exclusion=(reason or storage.EXCLUSION_REASONS[0]) if exclude else None,
        comment=(state.get(widget_key("comment", rid), a.comment or "") or None),
    )


def save_draft(rid: ReadingId, reading: Reading) -> None:
    """Store the reading as its draft if anything changed since the last save."""
    if not reading.unsaved:
        return
    _, session_id, reader_id, sha = rid
    with common.db().begin() as s:
        storage.save_draft(s, reader_id=reader_id, image_sha=sha, session_id=session_id, **reading.draft_fields())
    reading.stored()


def flush_all() -> list[str]:
    """Store what every opened film's canvas and answers last sent, whichever film this run will show.

    Called first thing in a run: a mark that reached the server together with a click on another
    film (or "Next film") is stored before that film's canvas is dropped. Returns error lines.
    """
    errors = []
    for rid, reading in list(readings().items()):
        report = canvas_report(rid, reading)
        if report is not None:
            try:
                reading.absorb(report)
            except CXRError as err:  # a bad report must not stop the others being saved
                errors.append(f"film {rid[3][:12]}: the drawing cannot be read ({err})")
                continue
        answers_from_widgets(rid, reading)
        try:
            save_draft(rid, reading)
        except (CXRError, SQLAlchemyError) as err:  # shown to the reader; the drawing stays in memory
            errors.append(f"film {rid[3][:12]}: the draft was not saved ({err})")
    return errors


def open_reading(rid: ReadingId, frame: Frame, view: View, *, drawing: Any, fit: Any, width: int, height: int,
                 answers: Answers) -> Reading:
    """The film's reading in this browser session; the first time, opened from its stored drawing (draft or version).

    What is stored counts as saved, so opening a film writes nothing.
    """
    store = readings()
    reading = store.get(rid)
    if reading is None:
        full = frame.bring_in(drawing, fit=fit, width=width, height=height)
        reading = store[rid] = Reading.open(full, frame, answers, view=view)
        if canvas_key(rid, reading.generation) in st.session_state:  # left over from an earlier reading
            reading.mount(view, frame)
    else:
        prepare_mount(rid, reading, frame, view)
    restore_answers(rid, reading)
    return reading


def prepare_mount(rid: ReadingId, reading: Reading, frame: Frame, view: View) -> None:
    """Remount the canvas (new key, the current marks moved into the view) if it is not mounted or the view changed.

    Not mounted means another film (or nothing) was drawn last run, so Streamlit dropped the
    canvas's state and a canvas under the old key would report a stale ``initial_drawing``.
    """
    mounted = reading.fresh or canvas_key(rid, reading.generation) in st.session_state
    if not mounted or view != reading.view or frame != reading.frame:
        reading.mount(view, frame)


def clear(rid: ReadingId) -> None:
    """"Clear all marks": the draft is deleted and the canvas remounted empty, answers unset."""
    reading = readings().get(rid)
    if reading is None:
        return
    _, session_id, reader_id, sha = rid
    try:
        with common.db().begin() as s:
            storage.delete_draft(s, reader_id=reader_id, image_sha=sha, session_id=session_id)
    except CXRError as err:  # nothing cleared: the marks and the draft stay as they were
        st.session_state[ANNOTATE_ERROR] = f"Marks not cleared: {err}"
        return
    reading.drawing, reading.answers = {"objects": []}, Answers()
    reading.mount(reading.view, reading.frame)
    reading.stored()
    for kind in ("diagnosis", "confidence", "comment", "exclude", "exclusion"):
        st.session_state.pop(widget_key(kind, rid), None)


def forget(rid: ReadingId, *, widgets: bool = True) -> None:
    """Drop a reading (submitted, saved as a version, or cancelled) and, from a callback, its widgets' values."""
    readings().pop(rid, None)
    for kind in () if not widgets else ("diagnosis", "confidence", "comment", "exclude", "exclusion"):
        st.session_state.pop(widget_key(kind, rid), None)


# --- the canvas and its picture ----------------------------------------------------------------


def current_view() -> View:
    zoom = st.session_state.get(ANNOTATE_ZOOM, 1)
    region = st.session_state.get(ANNOTATE_REGION, "centre")
    return View.at(zoom if zoom in ZOOMS else 1, region if region in REGIONS else "centre")


def frame_for(item: Item, vp: Viewport | None, current: Frame | None = None) -> Frame:
    """The full frame for a film: the largest canvas of the film's shape that fits the space below the probe.

    ``current`` (the frame the film is open in, or its draft's) is kept while the browser has not
    reported (a reload), and while it fits with at most :data:`FRAME_SLACK` to spare: a scroll bar
    coming and going must not resize (remount) the canvas under the reader's pen.
    """
    rows, cols = item.xray.shape[:2]
    if vp is None and current is not None and current.film_shape == (rows, cols):
        return current
    avail_w, avail_h = vp.space_below() if vp is not None else DEFAULT_SPACE
    width, height = canvas_size(int(avail_w), int(avail_h), cols / rows, min_side=300, max_side=1400)
    if current is not None and current.film_shape == (rows, cols) and (
            0 <= width - current.width <= FRAME_SLACK and 0 <= height - current.height <= FRAME_SLACK):
        return current  # a little smaller than the space: keep it (a larger one would pass the fold)
    return Frame(width, height, (rows, cols))


@st.cache_data(max_entries=24, show_spinner=False)
def _picture(url: str, image_sha: str, zoom: int, x: float, y: float, width: int, height: int, level: float,
             window: float, invert: bool, heatmap_key: str, _heatmap: np.ndarray | None, opacity: float,
             pixel_ratio: float):
    film = common.stored_item(image_sha).xray.pixels
    return view_picture(film, View(zoom, x, y), width, height, level=level, window=window, invert=invert,
                        heatmap=_heatmap, opacity=opacity, pixel_ratio=pixel_ratio)


def picture(item: Item, view: View, frame: Frame, *, level: float, window: float, invert: bool,
            heatmap: np.ndarray | None = None, heatmap_key: str = "", opacity: float = 0.5,
            vp: Viewport | None = None):
    """The picture behind the canvas (exactly the canvas's size), cached per film, view and display settings.

    ``heatmap_key`` names the heatmap (model, method, target) for the cache; the film comes from
    the database at full resolution, so a 4x zoom shows the film's own detail; on a sharp screen
    (``vp.pixel_ratio`` up to 2) the picture has that many pixels per CSS pixel.
    """
    from cxr_core.config import get_settings

    return _picture(get_settings().database_url, item.xray.sha256, view.zoom, view.x, view.y, frame.width,
                    frame.height, level, window, invert, heatmap_key if heatmap is not None else "", heatmap, opacity,
                    round(min(max(vp.pixel_ratio if vp else 1.0, 1.0), 2.0), 2))
