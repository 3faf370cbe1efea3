"""Annotation logic without Streamlit: findings by colour, canvas readings, drafts, new sessions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES
from cxr_core import annotation as ann
from cxr_core import storage
from cxr_core.annotation.masks import MaskError


def rect(left, top, width, height, finding="consolidation", **kw):
    """A Rect as the canvas's rect tool serialises it (origin left/top, stroke 3)."""
    obj = {"type": "Rect", "left": left, "top": top, "width": width, "height": height, "originX": "left",
           "originY": "top", "strokeWidth": 3, "stroke": ann.finding_color(finding), "fill": ann.finding_fill(finding)}
    obj.update(kw)
    return obj


def triangle(points, finding="effusion"):
    pts = np.asarray(points, dtype=float)
    lo, hi = pts.min(0), pts.max(0)
    return {"type": "Polygon", "points": [{"x": x, "y": y} for x, y in pts], "left": (lo[0] + hi[0]) / 2,
            "top": (lo[1] + hi[1]) / 2, "width": hi[0] - lo[0], "height": hi[1] - lo[1], "originX": "center",
            "originY": "center", "strokeWidth": 3, "stroke": ann.finding_color(finding)}


@pytest.fixture
def db(tmp_path):
    return storage.session_factory(storage.make_engine(f"sqlite:///{tmp_path / 'a.db'}"))


# --- findings and colours --------------------------------------------------------------------


def test_each_finding_has_its_own_colour_and_marks_are_labelled_by_it():
    assert len(set(ann.FINDINGS.values())) == len(ann.FINDINGS)
    objects = [rect(0, 0, 5, 5, "nodule/mass"), rect(0, 0, 5, 5, "effusion"), {"type": "Rect", "stroke": "black"}]
    assert ann.region_labels({"objects": objects}) == ["nodule/mass", "effusion", None]


@pytest.mark.parametrize("spelling", ["#FF4B4B", "#ff4b4b", "rgb(255, 75, 75)", "rgba(255,75,75,0.5)"])
def test_colour_spellings_fabric_may_send_match_the_same_finding(spelling):
    assert ann.region_labels([{"type": "Path", "stroke": spelling}]) == ["consolidation"]


def test_fill_is_see_through_in_the_finding_colour_and_unknown_findings_are_named():
    assert ann.finding_fill("effusion") == "rgba(61, 157, 243, 0.2)"
    with pytest.raises(ann.AnnotationInputError, match="'fibrosis'; expected one of consolidation"):
        ann.finding_color("fibrosis")


# --- canvas picture --------------------------------------------------------------------------


def test_contain_fit_shows_the_film_whole_and_centred():
    # The canvas's own mapping (stack.md section 3): box (100, 100) in a 400 x 400 canvas over an
    # 800 x 1024 image lands at (144, 256) in the image.
    fit = ann.contain_fit(800, 1024, 400, 400)
    assert fit["scale_x"] == fit["scale_y"] == 400 / 1024
    assert (100 - fit["offset_x"]) / fit["scale_x"] == pytest.approx(144)
    assert (100 - fit["offset_y"]) / fit["scale_y"] == pytest.approx(256)
    with pytest.raises(ann.AnnotationInputError, match="expected positive sizes"):
        ann.contain_fit(0, 10, 10, 10)


def test_window_level_changes_the_display_only():
    pixels = np.linspace(0, 1, 11, dtype=np.float32).reshape(1, 11)
    before = pixels.copy()
    full = ann.window_level(pixels)
    narrow = ann.window_level(pixels, level=0.45, window=0.2)
    assert full.tolist() == [[0, 26, 51, 76, 102, 128, 153, 178, 204, 230, 255]]
    assert narrow.tolist() == [[0, 0, 0, 0, 64, 191, 255, 255, 255, 255, 255]]  # 0.35..0.55 spread to 0..255
    assert ann.window_level(pixels, level=0.3)[0, 3] > full[0, 3]  # lower level: brighter
    np.testing.assert_array_equal(pixels, before)
    with pytest.raises(ann.AnnotationInputError, match="window 0"):
        ann.window_level(pixels, window=0)


# --- reading the canvas ----------------------------------------------------------------------


def test_read_canvas_measures_each_region_on_the_original_image():
    # A 200 x 100 (rows x cols) image shown in a 300 x 300 canvas: scale 1.5, 75 px margins left and right.
    fit = ann.contain_fit(100, 200, 300, 300)
    # Rect: 60 x 30 canvas px inside its 1.5 px half-stroke -> 40 x 20 image px.
    objects = [rect(75 + 15 - 1.5, 30 - 1.5, 60, 30, "consolidation"),
               triangle([(75, 150), (225, 150), (75, 300)], "effusion"),  # legs 100 x 100 image px
               {"type": "Line", "stroke": "black"}]
    reading = ann.read_canvas({"objects": objects}, image_shape=(200, 100), background_fit=fit)
    assert reading.labels == ["consolidation", "effusion", None]
    assert [(r.index, r.kind, r.finding) for r in reading.regions] == [(0, "rect", "consolidation"),
                                                                       (1, "polygon", "effusion")]
    assert reading.regions[0].area_px == 40 * 20
    assert reading.regions[1].area_px == pytest.approx(100 * 100 / 2, rel=0.02)
    assert reading.area_px == reading.regions[0].area_px + reading.regions[1].area_px  # they do not overlap
    assert reading.unlabelled == []
    assert reading.area_fraction == pytest.approx(reading.area_px / 20000)


def test_marks_in_no_finding_colour_are_reported_by_position():
    reading = ann.read_canvas([rect(0, 0, 10, 10), rect(0, 0, 10, 10, stroke="black")], image_shape=(50, 50),
                              background_fit=None)
    assert reading.unlabelled == [2]


def test_submission_needs_a_diagnosis_a_confidence_and_labelled_marks():
    good = ann.read_canvas([rect(0, 0, 10, 10)], image_shape=(50, 50), background_fit=None)
    odd = ann.read_canvas([rect(0, 0, 10, 10, stroke="black")], image_shape=(50, 50), background_fit=None)
    assert ann.submission_problems("Normal", 5, good) == []
    assert ann.submission_problems(None, None, good) == ["choose your diagnosis", "choose your confidence"]
    assert ann.submission_problems("Normal", 5, odd) == [
        "mark(s) [1] have a colour that matches no finding; undo and redraw them"]
    assert ann.submission_problems("Normal", 5, None) == ["fix the drawing (see the message under the canvas)"]


def test_unreadable_canvas_json_raises_mask_error():
    with pytest.raises(MaskError, match="does not parse"):
        ann.read_canvas("{not json", image_shape=(10, 10), background_fit=None)


# --- drafts ----------------------------------------------------------------------------------


def test_draft_fields_round_trip_to_the_same_initial_drawing(db):
    canvas = {"version": "7.4.0", "background": "", "objects": [rect(10, 10, 20, 20, "other")]}
    fit = ann.contain_fit(64, 64, 600, 600)
    fields = ann.draft_fields(canvas, canvas_width=600, canvas_height=600, background_fit=fit,
                              diagnosis="Normal", confidence=4)
    assert fields["labels"] == ["other"]
    assert "background" not in fields["canvas_json"]
    restored = ann.initial_drawing(fields["canvas_json"])
    assert restored == {"version": "7.4.0", "objects": canvas["objects"]}
    assert ann.drawing_key(restored, "Normal", 4) == ann.drawing_key(canvas, "Normal", 4)
    assert ann.drawing_key(restored, "Normal", 4) != ann.drawing_key(restored, "Normal", 5)
    assert ann.initial_drawing(None) == {"objects": []}


# --- images for a new session ----------------------------------------------------------------


def _png(path, value=0.5, size=80):
    Image.fromarray(np.full((size, size), int(value * 255), np.uint8)).save(path)


def test_read_uploads_keeps_good_files_and_names_bad_ones():
    good = (FIXTURES / "cxr" / "covid_hannover_b343e657.png").read_bytes()
    out = ann.read_uploads([("a.png", good), ("notes.txt", b"hello")])
    assert [x.name for x in out.xrays] == ["a.png"]
    assert len(out.errors) == 1 and out.errors[0].startswith("notes.txt: not an image")


def test_read_samples_handles_a_missing_list_and_keeps_labels(tmp_path):
    empty = ann.read_samples(tmp_path)
    assert empty.xrays == [] and "no bundled samples are installed" in empty.errors[0]
    _png(tmp_path / "a.png", 0.2)
    _png(tmp_path / "b.png", 0.8)
    (tmp_path / "samples.json").write_text(json.dumps([{"file": "a.png", "label": "Normal"}, {"file": "b.png"},
                                                       {"file": "gone.png", "label": "COVID-19"}]))
    out = ann.read_samples(tmp_path)
    assert [x.name for x in out.xrays] == ["a.png", "b.png"] and out.labels == ["Normal", None]
    assert len(out.errors) == 1 and out.errors[0].startswith("gone.png: cannot read")
    assert [x.name for x in ann.read_samples(tmp_path, ["b.png"]).xrays] == ["b.png"]
    assert ann.read_samples(tmp_path, []).errors == ["no sample chosen"]


def test_read_folder_takes_image_files_only(tmp_path):
    _png(tmp_path / "one.png", 0.1)
    _png(tmp_path / "two.png", 0.9)
    (tmp_path / "README.md").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "broken.jpg").write_bytes(b"junk")
    out = ann.read_folder(tmp_path)
    assert [x.name for x in out.xrays] == ["one.png", "two.png"]
    assert [e.split(":")[0] for e in out.errors] == ["broken.jpg"]
    with pytest.raises(ann.AnnotationInputError, match="holds 3 image files; at most 2"):
        ann.read_folder(tmp_path, limit=2)
    with pytest.raises(ann.AnnotationInputError, match="is not a folder on the server"):
        ann.read_folder(tmp_path / "nope")


def test_session_from_images_stores_each_image_once_and_shuffles_per_reader(db, tmp_path):
    for i in range(6):
        _png(tmp_path / f"{i}.png", i / 10)
    _png(tmp_path / "same_as_0.png", 0.0)  # identical pixels: one image
    images = ann.read_folder(tmp_path)
    images = ann.SessionImages(images.xrays, ["Normal"] + [None] * 6, images.errors)
    with db.begin() as s:
        admin = storage.add_reader(s, "Admin", "admin")
        readers = [storage.add_reader(s, f"R{i}", "sme") for i in range(3)]
        created = ann.create_session_from_xrays(s, name="batch", images=images, reader_ids=[r.id for r in readers],
                                                created_by=admin.id, seed=7)
    with db.begin() as s:
        orders = [[e.image_sha for e in storage.reader_queue(s, created.id, r.id).entries] for r in readers]
        assert storage.get_image(s, images.xrays[0].sha256).reference_label == "Normal"
    assert all(len(o) == 6 and set(o) == set(orders[0]) for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # seed 7 gives three readers not all the same order
    with db.begin() as s:
        plain = ann.create_session_from_xrays(s, name="plain", images=images, reader_ids=[r.id for r in readers],
                                              shuffle=False)
        plain_orders = {tuple(e.image_sha for e in storage.reader_queue(s, plain.id, r.id).entries) for r in readers}
    assert plain_orders == {tuple(dict.fromkeys(x.sha256 for x in images.xrays))}


def test_session_without_images_is_refused(db):
    with db.begin() as s, pytest.raises(storage.StorageError, match="no images given"):
        ann.create_session_from_xrays(s, name="empty", images=ann.SessionImages([], [], []), reader_ids=[])
