"""cxr_core.annotation.reading: which film opens, and a film's drawing kept whole across canvas remounts and zoom."""

from __future__ import annotations

import pytest

from cxr_core.annotation.canvas_view import View, frame_fit, to_view
from cxr_core.annotation.masks import region_masks
from cxr_core.annotation.reading import Answers, Frame, Reading, after_submit, opening_position, step

SHAPE = (419, 512)


def rect(left, top, width, height):
    return {"type": "rect", "left": left, "top": top, "width": width, "height": height, "originX": "left",
            "originY": "top", "strokeWidth": 3, "stroke": "#ff4b4b", "scaleX": 1, "scaleY": 1, "angle": 0}


def test_step_stays_inside_the_queue():
    assert [step(3, 0, -1), step(3, 0, 1), step(3, 2, 1), step(3, 2, -2)] == [None, 1, None, 0]


def test_after_submit_opens_the_next_film_to_read_wrapping_round_or_stays():
    assert after_submit([True, True, False, False], 1) == 2
    assert after_submit([False, True, True, True], 3) == 0
    assert after_submit([True, True, True], 1) == 1


def test_opening_position_prefers_a_valid_wanted_film_then_the_next_to_read():
    assert opening_position(5, 3, 1) == 3
    assert [opening_position(5, 7, 1), opening_position(5, None, 1), opening_position(5, -1, None)] == [1, 1, 4]


def test_a_fresh_mount_reporting_its_initial_drawing_changes_nothing():
    """The issue-12 overwrite: a remounted canvas reports what it was opened with; that must never replace marks."""
    frame = Frame(600, 491, SHAPE)
    marks = {"objects": [rect(100, 100, 50, 40)]}
    reading = Reading.open(marks, frame, Answers("Normal", 3))
    assert not reading.unsaved
    reading.mount(View())
    assert reading.generation == 1 and reading.initial["objects"] == marks["objects"]
    assert reading.absorb(reading.initial) is False and reading.drawing["objects"] == marks["objects"]
    assert reading.absorb(None) is True and reading.drawing["objects"] == []  # an emptied canvas is a change...
    assert reading.absorb({"objects": marks["objects"]}) is True  # ...and undoing back restores what it opened with
    assert reading.drawing == reading.opened_with and not reading.unsaved


def test_marks_drawn_zoomed_are_kept_in_the_full_frame_and_survive_a_zoom_change():
    frame = Frame(600, 491, SHAPE)
    full = rect(100, 100, 60, 40)
    reading = Reading.open({"objects": [full]}, frame)
    view = View.at(4, "upper left")
    reading.mount(view)
    assert reading.initial["objects"] == to_view([full], view, 600, 491, film_shape=SHAPE)
    drawn = rect(300, 200, 80, 80)  # 80 view px at 4x = 20 full-frame px
    assert reading.absorb({"objects": [*reading.initial["objects"], drawn]})
    assert reading.drawing["objects"][0]["left"] == pytest.approx(100)
    masks = region_masks(reading.drawing, image_shape=SHAPE, background_fit=frame.fit)
    s = frame.fit["scale_x"]
    assert masks[1].area == pytest.approx(20 * 20 / s**2, rel=0.1)
    reading.mount(View())  # back to 1x: both marks, in full-frame pixels
    assert [o["left"] for o in reading.initial["objects"]] == pytest.approx(
        [o["left"] for o in reading.drawing["objects"]])
    assert reading.draft_fields()["background_fit"] == frame_fit(SHAPE, 600, 491)


def test_a_draft_from_another_canvas_size_is_brought_into_this_frame():
    old, new = Frame(600, 491, SHAPE), Frame(900, 737, SHAPE)
    moved = new.bring_in({"objects": [rect(100, 100, 60, 40)]}, fit=old.fit, width=600, height=491)
    a = region_masks([rect(100, 100, 60, 40)], image_shape=SHAPE, background_fit=old.fit)[0].mask
    b = region_masks(moved, image_shape=SHAPE, background_fit=new.fit)[0].mask
    assert abs(int(a.sum()) - int(b.sum())) <= 0.02 * a.sum() and (a & b).sum() >= 0.95 * a.sum()


def test_an_exclusion_draft_stores_no_diagnosis_and_the_key_follows_the_answers():
    reading = Reading.open(None, Frame(600, 491, SHAPE), Answers("Normal", 2))
    reading.answer(exclusion="not readable")
    assert reading.unsaved
    fields = reading.draft_fields()
    assert (fields["diagnosis"], fields["confidence"], fields["exclusion"]) == (None, 2, "not readable")
    reading.stored()
    assert not reading.unsaved
