"""The annotate page under AppTest: blindness on every page, submitting a drawing, drafts.

The canvas cannot be drawn on headless; a drawing is injected the way the component reports one
(``research.md`` section 7: ``at.session_state[<canvas key>] = {"drawing": {"raw": ...},
"backgroundFit": ...}`` before ``run()``). The real drawing is in ``test_browser_annotate.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from streamlit.testing.v1 import AppTest

import ui_state as ui
from conftest import FIXTURES, REPO
from cxr_core import __version__ as APP_VERSION
from cxr_core import annotation as ann
from cxr_core import storage

TIMEOUT = 300  # the blindness test imports TensorFlow and runs tiny models; 2 cores are shared
CHEST = "covid_hannover_b343e657.png"  # 512 x 419: letterboxed in the square canvas
OTHER = "normal_nih14_00029719_000.png"


@dataclass
class Study:
    url: str
    session_id: int
    readers: dict[str, int]
    shas: dict[str, str]  # file name -> pixel hash, in each reader's order

    def db(self):
        return storage.session_factory(storage.make_engine(self.url))


@pytest.fixture
def study(tmp_path, monkeypatch) -> Study:
    """A blind session of CHEST then OTHER (unshuffled) for Dr A; Dr B reads nothing."""
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    factory = storage.session_factory(storage.make_engine(url))
    images = ann.read_uploads((name, (FIXTURES / "cxr" / name).read_bytes()) for name in (CHEST, OTHER))
    with factory.begin() as s:
        roles = (("Admin", "admin"), ("Dr A", "sme"), ("Dr B", "sme"))
        readers = {n: storage.add_reader(s, n, role).id for n, role in roles}
        session = ann.create_session_from_xrays(s, name="Blind 1", images=images, reader_ids=[readers["Dr A"]],
                                                created_by=readers["Admin"], shuffle=False)
    return Study(url, session.id, readers, {x.name: x.sha256 for x in images.xrays})


def open_page(page: str, reader: str | None = None) -> AppTest:
    """A fresh browser session on ``page``, with ``reader`` chosen on the annotate page first."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    at.switch_page("pages/annotate.py").run()
    if reader is not None:
        at.selectbox(key=ui.ANNOTATE_READER).select(reader).run()
    if page != "pages/annotate.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def key(kind: str, study: Study, name: str, reader: str = "Dr A") -> str:
    return ui.reading_key(kind, study.session_id, study.readers[reader], study.shas[name])


def canvas_key(study: Study, name: str, generation: int = 0) -> str:
    return ui.annotate_canvas_key(study.session_id, study.readers["Dr A"], study.shas[name], generation)


def draw(at: AppTest, study: Study, name: str, objects: list[dict], fit: dict, generation: int = 0) -> None:
    """Make the canvas report ``objects`` and its background fit, as the browser component does."""
    at.session_state[canvas_key(study, name, generation)] = {
        "drawing": {"raw": {"version": "7.4.0", "objects": objects}, "data": None},
        "backgroundFit": {"naturalWidth": fit["natural_width"], "naturalHeight": fit["natural_height"],
                          "scaleX": fit["scale_x"], "scaleY": fit["scale_y"], "offsetX": fit["offset_x"],
                          "offsetY": fit["offset_y"]},
    }


def canvas_data(at: AppTest) -> dict:
    """What the page sent to the (only) canvas on the page: tool, colours, initial drawing."""
    (canvas,) = at.get("bidi_component")
    return json.loads(canvas.proto.json)


def model_output_on_page(at: AppTest) -> list[str]:
    """Every element that would show a model's output: score charts and heatmap pictures (by caption)."""
    charts = [f"chart {c.proto.id}" for c in at.get("plotly_chart")]
    heatmaps = [c for img in at.get("image") for c in img.captions if "heatmap" in c.lower() or "cam" in c.lower()]
    return charts + heatmaps


def shows_scores_and_heatmap(at: AppTest) -> bool:
    """A score chart, and a heatmap picture unless the page says the map is empty for this film."""
    shown = model_output_on_page(at)
    empty_map = any("No positive evidence" in i.value for i in at.info)
    return any(x.startswith("chart") for x in shown) and (any(not x.startswith("chart") for x in shown) or empty_map)


def rect(left, top, width, height, finding):
    """A Rect as the rect tool draws it: origin left/top, the finding's stroke (3 px) and fill."""
    return {"type": "Rect", "left": left, "top": top, "width": width, "height": height, "originX": "left",
            "originY": "top", "strokeWidth": 3, "stroke": ann.finding_color(finding), "fill": ann.finding_fill(finding),
            "scaleX": 1, "scaleY": 1, "angle": 0}


def polygon(points, finding):
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return {"type": "Polygon", "points": [{"x": x, "y": y} for x, y in points], "left": (min(xs) + max(xs)) / 2,
            "top": (min(ys) + max(ys)) / 2, "width": max(xs) - min(xs), "height": max(ys) - min(ys),
            "originX": "center", "originY": "center", "strokeWidth": 3, "stroke": ann.finding_color(finding),
            "fill": ann.finding_fill(finding), "scaleX": 1, "scaleY": 1, "angle": 0}


def picture_fit() -> dict:
    # CHEST is 512 x 419: the canvas shows it at 600/512 with 54.5 px bands above and below.
    return ann.contain_fit(512, 419, ui.CANVAS_WIDTH, ui.CANVAS_HEIGHT)


def test_the_page_says_what_it_shows_and_asks_who_you_are(study):
    at = open_page("pages/annotate.py")
    assert "blind" in at.caption[0].value and "not diagnoses" in at.caption[0].value
    assert [i.value for i in at.info] == ["Choose your name to see your reading sessions."]
    at.selectbox(key=ui.ANNOTATE_READER).select("Dr B").run()
    assert "Dr B has no reading sessions yet" in at.info[0].value


def test_submit_stores_polygon_and_rectangle_with_their_areas_then_opens_the_next_image(study):
    at = open_page("pages/annotate.py", "Dr A")
    assert at.get("progress")[0].proto.text == "Your progress in Blind 1: 0 of 2 done"
    assert at.selectbox(key=ui.annotate_image_key(study.session_id, study.readers["Dr A"])).value == 0
    fit = picture_fit()
    s = fit["scale_x"]
    # Rectangle: filled area 117.1875 x 70.3125 canvas px (inside the 1.5 px half-stroke) = 100 x 60 image px.
    # Triangle: legs 234.375 and 175.78125 canvas px = 200 x 150 image px, area 15000.
    r = rect(60 - 1.5, fit["offset_y"] + 50 * s - 1.5, 100 * s, 60 * s, "consolidation")
    p = polygon([(300, fit["offset_y"] + 200 * s), (300 + 200 * s, fit["offset_y"] + 200 * s),
                 (300, fit["offset_y"] + 350 * s)], "ground-glass opacity")
    draw(at, study, CHEST, [p, r], fit)
    at.radio(key=key("diagnosis", study, CHEST)).set_value("COVID-19")
    at.radio(key=key("confidence", study, CHEST)).set_value(4).run()
    assert at.table[0].value["Finding"].tolist() == ["ground-glass opacity", "consolidation"]
    at.button(key=key("submit", study, CHEST)).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]

    with study.db().begin() as s_:
        saved = storage.latest_annotation(s_, reader_id=study.readers["Dr A"], image_sha=study.shas[CHEST],
                                          session_id=study.session_id)
        assert storage.get_draft(s_, reader_id=study.readers["Dr A"], image_sha=study.shas[CHEST],
                                 session_id=study.session_id) is None
        mask = storage.annotation_mask(saved)
    assert (saved.diagnosis, saved.confidence, saved.version) == ("COVID-19", 4, 1)
    assert [(x["type"], x["label"]) for x in saved.regions] == [("polygon", "ground-glass opacity"),
                                                                ("rect", "consolidation")]
    assert saved.regions[1]["area_px"] == 100 * 60
    assert saved.regions[0]["area_px"] == pytest.approx(15000, rel=0.02)
    assert saved.mask_area == pytest.approx(6000 + 15000, rel=0.02) and mask.shape == (419, 512)
    assert mask[80, 60] and mask[300, 300] and not mask[10, 10]  # inside the rectangle, the triangle; outside
    assert (saved.canvas_width, saved.canvas_height) == (ui.CANVAS_WIDTH, ui.CANVAS_HEIGHT)
    assert saved.background_fit == pytest.approx(fit)
    assert saved.canvas_json["objects"][1]["stroke"] == ann.finding_color("consolidation")
    assert saved.app_version == APP_VERSION and "drawable-canvas 0.13.0" in saved.canvas_version

    # The next image is open, blank, and progress moved on.
    assert "Image 1 saved (1 of 2 done). Next: image 2." in at.success[0].value
    assert at.get("progress")[0].proto.text == "Your progress in Blind 1: 1 of 2 done"
    assert at.selectbox(key=ui.annotate_image_key(study.session_id, study.readers["Dr A"])).value == 1
    assert canvas_data(at)["initialDrawing"]["objects"] == []


def test_submit_needs_a_diagnosis_and_a_confidence(study):
    at = open_page("pages/annotate.py", "Dr A")
    draw(at, study, CHEST, [rect(100, 100, 50, 50, "effusion")], picture_fit())
    at.run()
    at.button(key=key("submit", study, CHEST)).click().run()
    assert "choose your diagnosis; choose your confidence" in at.error[0].value
    with study.db().begin() as s:
        assert storage.latest_annotations(s, session_id=study.session_id) == []


def test_draft_is_saved_on_change_and_restored_after_a_rerun_and_a_refresh(study):
    at = open_page("pages/annotate.py", "Dr A")
    marks = [rect(100, 120, 80, 40, "nodule/mass"), polygon([(300, 300), (400, 300), (350, 380)], "effusion")]
    draw(at, study, CHEST, marks, picture_fit())
    at.radio(key=key("diagnosis", study, CHEST)).set_value("Pneumonia").run()

    def stored():
        with study.db().begin() as s:
            return storage.get_draft(s, reader_id=study.readers["Dr A"], image_sha=study.shas[CHEST],
                                     session_id=study.session_id)

    draft = stored()
    assert draft.canvas_json["objects"] == marks
    assert (draft.labels, draft.diagnosis, draft.confidence) == (["nodule/mass", "effusion"], "Pneumonia", None)
    first_save = draft.updated_at

    at.run()  # a rerun: the drawing is still there, nothing new is written
    assert len(at.table[0].value) == 2
    assert stored().updated_at == first_save

    # A browser refresh is a new browser session: the draft comes back on the canvas and in the form.
    again = open_page("pages/annotate.py", "Dr A")
    assert canvas_data(again)["initialDrawing"]["objects"] == marks
    assert again.radio(key=key("diagnosis", study, CHEST)).value == "Pneumonia"
    assert again.table[0].value["Finding"].tolist() == ["nodule/mass", "effusion"]
    assert again.selectbox(key=ui.annotate_image_key(study.session_id, study.readers["Dr A"])).options[0] == (
        "Image 1 of 2 (draft saved)")

    # "Clear all marks" drops the draft and opens an empty canvas under a new key.
    again.button(key=key("clear", study, CHEST)).click().run()
    assert stored() is None
    data = canvas_data(again)
    assert data["initialDrawing"]["objects"] == [] and again.get("bidi_component")[0].key == canvas_key(study, CHEST, 1)
    assert again.radio(key=key("diagnosis", study, CHEST)).value is None


def test_finding_and_tool_set_the_next_mark_colour_and_window_level_changes_only_the_picture(study):
    at = open_page("pages/annotate.py", "Dr A")
    before = canvas_data(at)
    at.selectbox(key=ui.ANNOTATE_FINDING).select("effusion")
    at.radio(key=ui.ANNOTATE_TOOL).set_value("Freehand")
    at.slider(key=ui.ANNOTATE_WINDOW).set_value(0.3).run()
    after = canvas_data(at)
    assert (after["strokeColor"], after["fillColor"], after["drawingMode"]) == (
        ann.FINDINGS["effusion"], ann.finding_fill("effusion"), "freedraw")
    assert after["backgroundImageFit"] == "contain" and after["backgroundImageURL"] != before["backgroundImageURL"]
    assert after["initialDrawing"] == before["initialDrawing"]  # the marks are not reloaded


def test_a_pending_blind_image_shows_no_model_output_on_any_page_until_submitted(study, use_registry, chest_png_bytes):
    upload = [(CHEST, chest_png_bytes, "image/png")]

    # Control: Dr B reads nothing blind, so the review page shows scores and a heatmap for the same film.
    control = open_page("pages/review.py", "Dr B")
    control.file_uploader(key=ui.REVIEW_UPLOADS).set_value(upload).run()
    assert shows_scores_and_heatmap(control), "the review page shows model output when the gate allows it"

    # Nobody chosen: the film is pending for someone in a blind session, so it stays hidden.
    anonymous = open_page("pages/review.py")
    anonymous.file_uploader(key=ui.REVIEW_UPLOADS).set_value(upload).run()
    assert model_output_on_page(anonymous) == []

    # Dr A, with the film pending: nothing on the annotate page, nothing on the review page.
    at = open_page("pages/annotate.py", "Dr A")
    assert model_output_on_page(at) == []
    assert "pending in your blind session(s) 'Blind 1'" in at.info[0].value
    assert not at.get("toggle")  # no reveal switch while pending
    at.switch_page("pages/review.py").run()
    at.file_uploader(key=ui.REVIEW_UPLOADS).set_value(upload).run()
    at.toggle(key=ui.REVIEW_COMPARE).set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert model_output_on_page(at) == []
    assert any("pending in your blind session" in i.value for i in at.info)

    # Dr A submits the film; then the model's result may be revealed next to the marks, and the review page shows it.
    at.switch_page("pages/annotate.py").run()
    draw(at, study, CHEST, [rect(100, 100, 60, 60, "consolidation")], picture_fit())
    at.radio(key=key("diagnosis", study, CHEST)).set_value("COVID-19")
    at.radio(key=key("confidence", study, CHEST)).set_value(3).run()
    at.button(key=key("submit", study, CHEST)).click().run()
    assert model_output_on_page(at) == []  # the next film (OTHER) is pending
    at.selectbox(key=ui.annotate_image_key(study.session_id, study.readers["Dr A"])).select(0).run()
    assert model_output_on_page(at) == []  # revealing is the reader's choice
    assert at.get("bidi_component")[0].key.startswith("annotate_submitted_canvas")  # their marks, read-only
    at.toggle(key=key("reveal", study, CHEST)).set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert shows_scores_and_heatmap(at)
    at.switch_page("pages/review.py").run()
    at.file_uploader(key=ui.REVIEW_UPLOADS).set_value(upload).run()
    assert shows_scores_and_heatmap(at)


def test_revising_a_submitted_reading_stores_a_new_version_and_keeps_the_old(study):
    at = open_page("pages/annotate.py", "Dr A")
    draw(at, study, CHEST, [rect(60, 60, 80, 50, "consolidation")], picture_fit())
    at.radio(key=key("diagnosis", study, CHEST)).set_value("Pneumonia")
    at.radio(key=key("confidence", study, CHEST)).set_value(2).run()
    at.button(key=key("submit", study, CHEST)).click().run()
    at.selectbox(key=ui.annotate_image_key(study.session_id, study.readers["Dr A"])).select(0).run()
    at.radio(key=key("revise_diagnosis", study, CHEST)).set_value("COVID-19")
    at.radio(key=key("revise_confidence", study, CHEST)).set_value(4).run()
    at.button(key=key("revise", study, CHEST)).click().run()
    assert not at.exception, [e.value for e in at.exception]
    with study.db().begin() as s_:
        history = storage.annotation_history(s_, reader_id=study.readers["Dr A"], image_sha=study.shas[CHEST],
                                             session_id=study.session_id)
        versions = [(a.version, a.diagnosis, a.confidence, a.mask_area) for a in history]
    assert sorted(versions)[0][:3] == (1, "Pneumonia", 2)
    assert sorted(versions)[1][:3] == (2, "COVID-19", 4)
    assert versions[0][3] == versions[1][3] > 0  # the marks (and their mask) carry over unchanged
    assert any("version 2" in m.value for m in at.markdown)
