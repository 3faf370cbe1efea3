"""The annotate page under AppTest: blindness on every page, submitting a drawing, drafts.

The canvas cannot be drawn on headless; a drawing is injected the way the component reports one
(``research.md`` section 7: ``at.session_state[<canvas key>] = {"drawing": {"raw": ...},
"backgroundFit": ...}`` before ``run()``). The real drawing is in ``test_browser_annotate.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from auth_helpers import login
from conftest import FIXTURES, REPO
from cxr_core import __version__ as APP_VERSION
from cxr_core import annotation as ann
from cxr_core import storage
from cxr_core.annotation.canvas_view import View, frame_fit, from_view, to_view
from cxr_core.annotation.masks import region_masks
from ui import annotate as ua
from ui import review

TIMEOUT = 300  # the blindness test imports TensorFlow and runs tiny models; 2 cores are shared
CHEST = "covid_hannover_b343e657.png"  # 512 x 419: letterboxed in the square canvas
OTHER = "normal_nih14_00029719_000.png"  # 256 x 256
THIRD = "normal_kermany224_IM-0001-0001.png"


@dataclass
class Study:
    url: str
    session_id: int
    readers: dict[str, int]
    shas: dict[str, str]  # file name -> pixel hash, in each reader's order

    def db(self):
        return storage.session_factory(storage.make_engine(self.url))


def make_study(tmp_path, monkeypatch, names: tuple[str, ...]) -> Study:
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    factory = storage.session_factory(storage.make_engine(url))
    images = ann.read_uploads((name, (FIXTURES / "cxr" / name).read_bytes()) for name in names)
    with factory.begin() as s:
        roles = (("Admin", "admin"), ("Dr A", "sme"), ("Dr B", "sme"))
        readers = {n: storage.add_reader(s, n, role).id for n, role in roles}
        session = ann.create_session_from_xrays(s, name="Blind 1", images=images, reader_ids=[readers["Dr A"]],
                                                created_by=readers["Admin"], shuffle=False)
    return Study(url, session.id, readers, {x.name: x.sha256 for x in images.xrays})


@pytest.fixture
def study(tmp_path, monkeypatch) -> Study:
    """A blind session of CHEST then OTHER (unshuffled) for Dr A; Dr B reads nothing."""
    return make_study(tmp_path, monkeypatch, (CHEST, OTHER))


@pytest.fixture
def study3(tmp_path, monkeypatch) -> Study:
    """A blind session of CHEST, OTHER and THIRD (unshuffled) for Dr A."""
    return make_study(tmp_path, monkeypatch, (CHEST, OTHER, THIRD))


def open_page(page: str, reader: str | None = None) -> AppTest:
    """A fresh browser session on ``page`` with ``reader`` (an sme of the study) logged in; None: nobody."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    if reader is not None:
        login(at, name=reader, role="sme")
    at.run()
    if reader is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def key(kind: str, study: Study, name: str, reader: str = "Dr A") -> str:
    return ua.reading_key(kind, study.session_id, study.readers[reader], study.shas[name])


def canvas_key(study: Study, name: str, generation: int = 0) -> str:
    return ua.annotate_canvas_key(study.session_id, study.readers["Dr A"], study.shas[name], generation)


def draw(at: AppTest, study: Study, name: str, objects: list[dict], fit: dict) -> None:
    """Make the film's canvas on the page report ``objects`` and its background fit, as the browser component does.

    The page remounts a film's canvas under a new generation each time it is opened again, so the
    drawing goes to the canvas shown now (which must be ``name``'s).
    """
    (canvas,) = canvases(at)
    assert canvas.key.startswith(canvas_key(study, name, 0)[:-1]), (canvas.key, name)
    at.session_state[canvas.key] = {
        "drawing": {"raw": {"version": "7.4.0", "objects": objects}, "data": None},
        "backgroundFit": {"naturalWidth": fit["natural_width"], "naturalHeight": fit["natural_height"],
                          "scaleX": fit["scale_x"], "scaleY": fit["scale_y"], "offsetX": fit["offset_x"],
                          "offsetY": fit["offset_y"]},
    }


def canvases(at: AppTest) -> list:
    """The canvases on the page (the page's other component, the invisible window-size probe, left out)."""
    return [c for c in at.get("bidi_component") if c.key != "annotate_viewport"]


def canvas_data(at: AppTest) -> dict:
    """What the page sent to the (only) canvas on the page: tool, colours, initial drawing."""
    (canvas,) = canvases(at)
    return json.loads(canvas.proto.json)


def model_output_on_page(at: AppTest) -> list[str]:
    """Every element that would show a model's output: score charts and heatmap pictures (by caption)."""
    charts = [f"chart {c.proto.id}" for c in at.get("plotly_chart")]
    heatmaps = [c for img in at.get("image") for c in img.captions if "heatmap" in c.lower() or "cam" in c.lower()]
    over_marks = [c.value for c in at.caption if "Grad-CAM heatmap for" in c.value]  # the canvas's background
    return charts + heatmaps + over_marks


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


def canvas_size(at: AppTest) -> tuple[int, int]:
    data = canvas_data(at)
    return data["canvasWidth"], data["canvasHeight"]


def picture_fit(at: AppTest, shape: tuple[int, int] = (419, 512)) -> dict:
    """The full frame's fit of the film on the page's canvas (CHEST is 512 x 419; the canvas takes its shape)."""
    return frame_fit(shape, *canvas_size(at))


def test_the_page_says_what_it_shows_for_the_logged_in_reader_only(study):
    at = open_page("pages/annotate.py", "Dr B")
    assert "blind" in at.caption[0].value and "not diagnoses" in at.caption[0].value
    assert at.info[0].value.startswith("Dr B, you have no reading sessions yet")
    assert not [s for s in at.selectbox if s.label == "Who are you?"]  # identity is the login, never a choice
    # ...nor a URL: the old annotate_reader parameter names nobody
    url = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(url, name="Dr B", role="sme")
    url.query_params["annotate_reader"] = "Dr A"
    url.run()
    url.switch_page("pages/annotate.py").run()
    assert url.info[0].value.startswith("Dr B, you have no reading sessions yet") and not url.get("progress")


def test_submit_stores_polygon_and_rectangle_with_their_areas_then_opens_the_next_image(study):
    at = open_page("pages/annotate.py", "Dr A")
    assert at.get("progress")[0].proto.text == "Your progress in Blind 1: 0 of 2 done"
    assert at.selectbox(key=ua.annotate_image_key(study.session_id, study.readers["Dr A"])).value == 0
    fit, size = picture_fit(at), canvas_size(at)
    s, ox, oy = fit["scale_x"], fit["offset_x"], fit["offset_y"]
    # Rectangle: 100 x 60 image px from column 60, row 50 (its fill inside the 1.5 px half-stroke).
    # Triangle: legs of 200 and 150 image px from column 256, row 200: area 15000.
    r = rect(ox + 60 * s - 1.5, oy + 50 * s - 1.5, 100 * s, 60 * s, "consolidation")
    p = polygon([(ox + 256 * s, oy + 200 * s), (ox + 456 * s, oy + 200 * s), (ox + 256 * s, oy + 350 * s)],
                "ground-glass opacity")
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
    assert mask[80, 100] and mask[300, 280] and not mask[10, 10]  # inside the rectangle, the triangle; outside
    assert (saved.canvas_width, saved.canvas_height) == size
    assert saved.background_fit == pytest.approx(fit)
    assert saved.canvas_json["objects"][1]["stroke"] == ann.finding_color("consolidation")
    assert saved.app_version == APP_VERSION and "drawable-canvas 0.13.0" in saved.canvas_version

    # The next image is open, blank, and progress moved on.
    assert "Film 1 saved (1 of 2 done). Next: film 2." in at.success[0].value
    assert at.get("progress")[0].proto.text == "Your progress in Blind 1: 1 of 2 done"
    assert at.selectbox(key=ua.annotate_image_key(study.session_id, study.readers["Dr A"])).value == 1
    assert canvas_data(at)["initialDrawing"]["objects"] == []


def test_submit_needs_a_diagnosis_and_a_confidence(study):
    at = open_page("pages/annotate.py", "Dr A")
    draw(at, study, CHEST, [rect(100, 100, 50, 50, "effusion")], picture_fit(at))
    at.run()
    at.button(key=key("submit", study, CHEST)).click().run()
    assert "choose your diagnosis; choose your confidence" in at.error[0].value
    with study.db().begin() as s:
        assert storage.latest_annotations(s, session_id=study.session_id) == []


def test_draft_is_saved_on_change_and_restored_after_a_rerun_and_a_refresh(study):
    at = open_page("pages/annotate.py", "Dr A")
    marks = [rect(100, 120, 80, 40, "nodule/mass"), polygon([(300, 300), (400, 300), (350, 380)], "effusion")]
    draw(at, study, CHEST, marks, picture_fit(at))
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
    assert again.selectbox(key=ua.annotate_image_key(study.session_id, study.readers["Dr A"])).options == [
        "Film 1 of 2", "Film 2 of 2"]
    assert any(m.value == "Film 1: **draft saved**" for m in again.markdown)

    # "Clear all marks" drops the draft and opens an empty canvas under a new key.
    again.button(key=key("clear", study, CHEST)).click().run()
    assert stored() is None
    data = canvas_data(again)
    assert data["initialDrawing"]["objects"] == [] and canvases(again)[0].key == canvas_key(study, CHEST, 1)
    assert again.radio(key=key("diagnosis", study, CHEST)).value is None


def test_finding_and_tool_set_the_next_mark_colour_and_window_level_changes_only_the_picture(study):
    at = open_page("pages/annotate.py", "Dr A")
    before = canvas_data(at)
    at.selectbox(key=ua.ANNOTATE_FINDING).select("effusion")
    at.radio(key=ua.ANNOTATE_TOOL).set_value("Freehand")
    at.slider(key=ua.ANNOTATE_WINDOW).set_value(0.3).run()
    after = canvas_data(at)
    assert (after["strokeColor"], after["fillColor"], after["drawingMode"]) == (
        ann.FINDINGS["effusion"], ann.finding_fill("effusion"), "freedraw")
    assert after["backgroundImageFit"] == "stretch" and after["backgroundImageURL"] != before["backgroundImageURL"]
    assert after["initialDrawing"] == before["initialDrawing"]  # the marks are not reloaded


def test_a_pending_blind_image_shows_no_model_output_on_any_page_until_submitted(study, use_registry, chest_png_bytes):
    upload = [(CHEST, chest_png_bytes, "image/png")]

    # Control: Dr B reads nothing blind, so the review page shows scores and a heatmap for the same film.
    control = open_page("pages/review.py", "Dr B")
    control.file_uploader(key=review.REVIEW_UPLOADS).set_value(upload).run()
    assert shows_scores_and_heatmap(control), "the review page shows model output when the gate allows it"

    # Nobody logged in: only the login form (here the first administrator's: the study's Admin has no password).
    anonymous = open_page("pages/review.py")
    assert "Password" in [x.label for x in anonymous.text_input]
    assert not [x for x in anonymous.title if x.value == "Review X-rays"] and not anonymous.get("file_uploader")
    assert model_output_on_page(anonymous) == []

    # Dr A, with the film pending: nothing on the annotate page, nothing on the review page.
    at = open_page("pages/annotate.py", "Dr A")
    assert model_output_on_page(at) == []
    assert "pending in your blind session(s) 'Blind 1'" in at.info[0].value
    assert not at.get("toggle")  # no reveal switch while pending
    at.switch_page("pages/review.py").run()
    at.file_uploader(key=review.REVIEW_UPLOADS).set_value(upload).run()
    at.toggle(key=review.REVIEW_COMPARE).set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert model_output_on_page(at) == []
    assert any("pending in your blind session" in i.value for i in at.info)

    # Dr A submits the film; then the model's result may be revealed next to the marks, and the review page shows it.
    at.switch_page("pages/annotate.py").run()
    draw(at, study, CHEST, [rect(100, 100, 60, 60, "consolidation")], picture_fit(at))
    at.radio(key=key("diagnosis", study, CHEST)).set_value("COVID-19")
    at.radio(key=key("confidence", study, CHEST)).set_value(3).run()
    at.button(key=key("submit", study, CHEST)).click().run()
    assert model_output_on_page(at) == []  # the next film (OTHER) is pending
    at.selectbox(key=ua.annotate_image_key(study.session_id, study.readers["Dr A"])).select(0).run()
    assert model_output_on_page(at) == []  # revealing is the reader's choice
    assert canvases(at)[0].key.startswith("annotate_submitted_canvas")  # their marks, read-only
    hidden = canvas_data(at)
    at.toggle(key=key("reveal", study, CHEST)).set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert shows_scores_and_heatmap(at)
    # The heatmap is drawn over the reader's own marks, on the same canvas, with an opacity slider.
    shown = canvas_data(at)
    assert shown["initialDrawing"]["objects"] == hidden["initialDrawing"]["objects"] != []
    if not any("No positive evidence" in i.value for i in at.info):
        assert shown["backgroundImageURL"] != hidden["backgroundImageURL"]
        at.slider(key=ua.ANNOTATE_OPACITY).set_value(0.9).run()
        assert canvas_data(at)["backgroundImageURL"] != shown["backgroundImageURL"]
    at.switch_page("pages/review.py").run()
    at.file_uploader(key=review.REVIEW_UPLOADS).set_value(upload).run()
    assert shows_scores_and_heatmap(at)

    # The audit trail: one reveal, and model output shown once per page, never while the film was pending.
    from cxr_core import auth

    sha = study.shas[CHEST]
    with study.db()() as s:
        reveals = [(e.who, e.film_sha) for e in auth.events(s, action="reveal")]
        shown = [(e.who, e.detail.split(":")[0]) for e in auth.events(s, action="model_output_shown", film_sha=sha)]
    assert reveals == [("Dr A", sha)]
    assert ("Dr A", "annotate") in shown and ("Dr A", "review") in shown and shown.count(("Dr A", "annotate")) == 1
    assert set(shown) <= {("Dr A", "annotate"), ("Dr A", "review"), ("Dr A", "review compare"), ("Dr B", "review"),
                          ("Dr B", "review compare")}


# --- issue 12: the film picker, navigation, answers, revisions, reading times, zoom ----------------


def picker(at: AppTest, study: Study):
    return at.selectbox(key=ua.annotate_image_key(study.session_id, study.readers["Dr A"]))


def film_status(at: AppTest) -> str:
    (status,) = [m.value for m in at.markdown if m.value.startswith("Film ") and "**" in m.value]
    return status


def draft_of(study: Study, name: str):
    with study.db().begin() as s:
        return storage.get_draft(s, reader_id=study.readers["Dr A"], image_sha=study.shas[name],
                                 session_id=study.session_id)


def history_of(study: Study, name: str):
    with study.db().begin() as s:
        rows = storage.annotation_history(s, reader_id=study.readers["Dr A"], image_sha=study.shas[name],
                                          session_id=study.session_id)
        return sorted(((a.version, a.diagnosis, a.confidence, a.exclusion, a.comment, a.mask_area, a.shown_at,
                        [o["left"] for o in a.canvas_json["objects"]]) for a in rows))


def submit(at: AppTest, study: Study, name: str, objects: list[dict], diagnosis="COVID-19", confidence=3) -> None:
    draw(at, study, name, objects, picture_fit(at))
    at.radio(key=key("diagnosis", study, name)).set_value(diagnosis)
    at.radio(key=key("confidence", study, name)).set_value(confidence).run()
    at.button(key=key("submit", study, name)).click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]


def button(at: AppTest, label: str):
    (found,) = [b for b in at.button if b.label == label]
    return found


def test_a_draft_saved_on_film_2_never_moves_the_picker(study3):
    """The reported bug: picker options were relabelled "(draft saved)" as the draft was written, and the picker
    fell back to film 1. Options are now position labels that never change; the status is shown beside them."""
    at = open_page("pages/annotate.py", "Dr A")
    submit(at, study3, CHEST, [rect(100, 100, 60, 60, "consolidation")])
    labels = ["Film 1 of 3", "Film 2 of 3", "Film 3 of 3"]
    assert picker(at, study3).value == 1 and picker(at, study3).options == labels
    assert film_status(at) == "Film 2: **to do**"
    marks = []
    for n in range(3):  # three marks, one rerun each, as the canvas sends them
        marks.append(rect(60 + 100 * n, 80, 50, 40, "effusion"))
        draw(at, study3, OTHER, list(marks), picture_fit(at, (256, 256)))
        at.run()
        assert picker(at, study3).value == 1 and picker(at, study3).options == labels  # the same labels throughout
        assert len(draft_of(study3, OTHER).canvas_json["objects"]) == n + 1
    assert film_status(at) == "Film 2: **draft saved**"
    at.run()  # and the selection survives more reruns after the draft flag changed
    assert picker(at, study3).value == 1 and canvas_data(at)["initialDrawing"]["objects"] == []


def test_leaving_a_film_and_coming_back_keeps_every_mark_and_answer(study3):
    """The canvas's state is dropped while another film shows; coming back must reopen the draft, never save
    the canvas's first (empty) report over it."""
    at = open_page("pages/annotate.py", "Dr A")
    marks = [rect(100, 120, 80, 40, "nodule/mass")]
    draw(at, study3, CHEST, marks, picture_fit(at))
    at.radio(key=key("diagnosis", study3, CHEST)).set_value("Pneumonia").run()
    button(at, "Next film").click().run()
    assert picker(at, study3).value == 1
    button(at, "Previous film").click().run()
    assert picker(at, study3).value == 0
    assert draft_of(study3, CHEST).canvas_json["objects"] == marks and draft_of(study3, CHEST).diagnosis == "Pneumonia"
    (canvas,) = canvases(at)
    assert canvas.key == canvas_key(study3, CHEST, 1)  # a new mount, opened with the marks
    assert canvas_data(at)["initialDrawing"]["objects"] == marks
    assert at.radio(key=key("diagnosis", study3, CHEST)).value == "Pneumonia"
    at.run()  # the fresh canvas reports what it was opened with: nothing is written
    assert draft_of(study3, CHEST).canvas_json["objects"] == marks


def test_a_mark_sent_together_with_a_click_on_next_film_is_stored(study3):
    at = open_page("pages/annotate.py", "Dr A")
    marks = [rect(150, 150, 70, 70, "other")]
    draw(at, study3, CHEST, marks, picture_fit(at))
    button(at, "Next film").click().run()  # the canvas report and the click arrive in the same run
    assert picker(at, study3).value == 1
    assert draft_of(study3, CHEST).canvas_json["objects"] == marks


def test_previous_and_next_film_and_the_picker_move_by_position(study3):
    at = open_page("pages/annotate.py", "Dr A")
    assert button(at, "Previous film").disabled and not button(at, "Next film").disabled
    button(at, "Next film").click().run()
    button(at, "Next film").click().run()
    assert picker(at, study3).value == 2 and button(at, "Next film").disabled
    assert canvases(at)[0].key.startswith(f"annotate_canvas::{study3.session_id}")
    assert study3.shas[THIRD] in canvases(at)[0].key
    picker(at, study3).select(0).run()
    assert picker(at, study3).value == 0 and study3.shas[CHEST] in canvases(at)[0].key
    film_param = f"{study3.session_id}.1"  # a reload opens the same film
    assert at.query_params["film"] in (film_param, [film_param])


def test_submit_opens_the_next_film_still_to_read_wrapping_round(study3):
    at = open_page("pages/annotate.py", "Dr A")
    button(at, "Next film").click().run()
    submit(at, study3, OTHER, [])
    assert picker(at, study3).value == 2 and "Film 2 saved (1 of 3 done). Next: film 3." in at.success[0].value
    submit(at, study3, THIRD, [], diagnosis="Normal")
    assert picker(at, study3).value == 0  # film 1 is the only one left
    submit(at, study3, CHEST, [])
    assert picker(at, study3).value == 0 and "That was your last film." in at.success[-1].value


def test_excluding_a_film_needs_no_diagnosis_and_is_stored_as_an_exclusion(study):
    at = open_page("pages/annotate.py", "Dr A")
    at.checkbox(key=key("exclude", study, CHEST)).check().run()
    assert at.radio(key=key("diagnosis", study, CHEST)).disabled
    at.radio(key=key("exclusion", study, CHEST)).set_value("not readable").run()
    assert draft_of(study, CHEST).exclusion == "not readable"  # the draft keeps the answer too
    at.text_input(key=key("comment", study, CHEST)).input("motion blur, repeat the film").run()
    at.button(key=key("submit", study, CHEST)).click().run()
    assert not at.error, [e.value for e in at.error]
    (v1,) = history_of(study, CHEST)
    assert v1[:5] == (1, storage.EXCLUDED, None, "not readable", "motion blur, repeat the film")
    with study.db().begin() as s:
        assert storage.reader_queue(s, study.session_id, study.readers["Dr A"]).entries[0].excluded
    picker(at, study).select(0).run()
    shown = [m.value for m in at.markdown]
    assert "Excluded: **not readable**" in shown and "motion blur, repeat the film" in [t.value for t in at.text]
    assert film_status(at) == "Film 1: **excluded (version 1)**"


def test_a_comment_is_stored_and_shown_back_with_the_reading(study):
    at = open_page("pages/annotate.py", "Dr A")
    at.text_input(key=key("comment", study, CHEST)).input("small left effusion?")
    submit(at, study, CHEST, [rect(100, 100, 60, 60, "effusion")], diagnosis="Pneumonia", confidence=2)
    assert history_of(study, CHEST)[0][4] == "small left effusion?"
    picker(at, study).select(0).run()
    assert "small left effusion?" in [t.value for t in at.text]  # plain text, never markdown
    assert "Your diagnosis: **Pneumonia**, confidence 2 of 5" in [m.value for m in at.markdown]


def test_a_typed_comment_is_kept_in_the_draft_and_survives_a_reload(study):
    at = open_page("pages/annotate.py", "Dr A")
    at.text_input(key=key("comment", study, CHEST)).input("*not* markdown: [x](http://example.org)").run()
    assert draft_of(study, CHEST).comment == "*not* markdown: [x](http://example.org)"
    again = open_page("pages/annotate.py", "Dr A")  # a reload: a new browser session, state from the database
    assert again.text_input(key=key("comment", study, CHEST)).value == "*not* markdown: [x](http://example.org)"
    submit(again, study, CHEST, [], diagnosis="Normal", confidence=4)
    assert history_of(study, CHEST)[0][4] == "*not* markdown: [x](http://example.org)"
    picker(again, study).select(0).run()
    assert "*not* markdown: [x](http://example.org)" in [t.value for t in again.text]


def revise_canvas_key(study: Study, name: str, generation: int = 0) -> str:
    return f"annotate_revise_canvas::{study.session_id}:{study.readers['Dr A']}:{study.shas[name]}:{generation}"


def test_revising_marks_stores_version_2_and_keeps_version_1(study):
    at = open_page("pages/annotate.py", "Dr A")
    first = [rect(60, 60, 80, 50, "consolidation")]
    submit(at, study, CHEST, first, diagnosis="Pneumonia", confidence=2)
    picker(at, study).select(0).run()
    assert button(at, "Revise my reading") and not [b for b in at.button if b.label.startswith("Save as version")]
    button(at, "Revise my reading").click().run()
    (canvas,) = canvases(at)
    assert canvas.key == revise_canvas_key(study, CHEST)
    assert canvas_data(at)["initialDrawing"]["objects"] == first  # pre-filled with the submitted marks
    assert at.radio(key=key("revise_diagnosis", study, CHEST)).value == "Pneumonia"
    assert at.radio(key=key("revise_confidence", study, CHEST)).value == 2

    second = [*first, rect(300, 200, 60, 90, "effusion")]
    at.session_state[revise_canvas_key(study, CHEST)] = {"drawing": {"raw": {"objects": second}}, "backgroundFit": None}
    at.radio(key=key("revise_diagnosis", study, CHEST)).set_value("COVID-19").run()
    assert draft_of(study, CHEST).canvas_json["objects"] == second  # a revision under way is not lost either
    button(at, "Save as version 2").click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    v1, v2 = history_of(study, CHEST)
    assert v1[:3] == (1, "Pneumonia", 2) and v1[7] == [60]
    assert v2[:3] == (2, "COVID-19", 2) and v2[7] == [60, 300] and v2[5] > v1[5]
    assert draft_of(study, CHEST) is None
    assert "saved as version 2; version 1 is kept" in at.success[0].value
    assert any("version 2" in m.value for m in at.markdown)


def test_cancel_revision_leaves_without_a_new_version(study):
    at = open_page("pages/annotate.py", "Dr A")
    submit(at, study, CHEST, [rect(60, 60, 80, 50, "consolidation")])
    picker(at, study).select(0).run()
    button(at, "Revise my reading").click().run()
    at.session_state[revise_canvas_key(study, CHEST)] = {"drawing": {"raw": {"objects": []}}, "backgroundFit": None}
    at.run()
    button(at, "Cancel revision").click().run()
    assert [v[0] for v in history_of(study, CHEST)] == [1] and draft_of(study, CHEST) is None
    assert button(at, "Revise my reading")
    assert canvas_data(at)["initialDrawing"]["objects"][0]["left"] == 60


def test_when_a_film_was_first_shown_is_recorded_for_every_version(study):
    at = open_page("pages/annotate.py", "Dr A")

    def starts():
        with study.db().begin() as s:
            rows = s.scalars(select(storage.ReadingStart).where(storage.ReadingStart.image_sha == study.shas[CHEST]))
            return sorted((r.version, r.shown_at) for r in rows)

    (shown,) = starts()
    assert shown[0] == 1
    at.run()
    assert starts() == [shown]  # reruns keep the first time
    submit(at, study, CHEST, [])
    assert history_of(study, CHEST)[0][6] == shown[1]  # the server copied it into the reading
    picker(at, study).select(0).run()
    assert len(starts()) == 1  # looking back at a submitted film starts no new version
    button(at, "Revise my reading").click().run()
    assert [v for v, _ in starts()] == [1, 2]


def test_zoom_shows_the_marks_in_the_view_and_stores_them_in_full_frame_pixels(study):
    at = open_page("pages/annotate.py", "Dr A")
    assert at.radio(key=ua.ANNOTATE_ZOOM).options == ["1x", "2x", "4x"]
    assert "upper left" in at.selectbox(key=ua.ANNOTATE_REGION).options and at.checkbox(key=ua.ANNOTATE_INVERT)
    size, shape = canvas_size(at), (419, 512)
    full = [rect(100, 100, 60, 40, "consolidation")]
    draw(at, study, CHEST, full, picture_fit(at))
    at.run()
    at.radio(key=ua.ANNOTATE_ZOOM).set_value(2)
    at.selectbox(key=ua.ANNOTATE_REGION).select("upper left").run()
    view = View.at(2, "upper left")
    # The canvas is remounted with the full-frame mark moved into the view; the draft is unchanged.
    assert canvas_data(at)["initialDrawing"]["objects"] == to_view(full, view, *size, film_shape=shape)
    assert draft_of(study, CHEST).canvas_json["objects"] == full
    # A mark drawn at 2x is stored in the full frame: where from_view puts it, and measured as such.
    (canvas,) = canvases(at)
    zoomed = [*to_view(full, view, *size, film_shape=shape), rect(200, 160, 80, 60, "effusion")]
    at.session_state[canvas.key] = {"drawing": {"raw": {"objects": zoomed}}, "backgroundFit": None}
    at.run()
    stored = draft_of(study, CHEST)
    expected = from_view(zoomed, view, *size, film_shape=shape)
    assert [o["left"] for o in stored.canvas_json["objects"]] == pytest.approx([o["left"] for o in expected])
    assert stored.canvas_json["objects"][0]["left"] == pytest.approx(100)
    assert stored.background_fit == pytest.approx(frame_fit(shape, *size))
    (m_full, m_zoom) = region_masks(stored.canvas_json, image_shape=shape, background_fit=stored.background_fit)
    s = frame_fit(shape, *size)["scale_x"]
    assert m_zoom.area == pytest.approx((80 / 2) * (60 / 2) / s**2, rel=0.05)  # half the size at 2x, not 4x the area
    # Back to 1x: the canvas shows both marks in full-frame pixels, nothing lost.
    at.radio(key=ua.ANNOTATE_ZOOM).set_value(1).run()
    assert [o["left"] for o in canvas_data(at)["initialDrawing"]["objects"]] == pytest.approx(
        [o["left"] for o in expected])
    assert len(draft_of(study, CHEST).canvas_json["objects"]) == 2


def test_revealing_a_film_the_model_refuses_shows_the_refusal_not_scores(tmp_path, monkeypatch, use_registry):
    """The reveal takes the one analysis path: a film that does not look like a chest X-ray (noise, kept in a
    session) shows the refusal with its reasons and figures, never a score or a heatmap."""
    import io

    import numpy as np
    from PIL import Image

    noise = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((419, 512)) * 255).astype(np.uint8)).save(noise, "PNG")
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    images = ann.read_uploads([("noise.png", noise.getvalue())])
    with storage.session_factory(storage.make_engine(url)).begin() as s:
        readers = {n: storage.add_reader(s, n, role).id for n, role in (("Admin", "admin"), ("Dr A", "sme"))}
        session = ann.create_session_from_xrays(s, name="Kept", images=images, reader_ids=[readers["Dr A"]],
                                                created_by=readers["Admin"], shuffle=False)
    study = Study(url, session.id, readers, {"noise.png": images.xrays[0].sha256})
    at = open_page("pages/annotate.py", "Dr A")
    draw(at, study, "noise.png", [rect(100, 100, 60, 60, "consolidation")], picture_fit(at))
    at.radio(key=key("diagnosis", study, "noise.png")).set_value("COVID-19")
    at.radio(key=key("confidence", study, "noise.png")).set_value(3).run()
    at.button(key=key("submit", study, "noise.png")).click().run()
    at.selectbox(key=ua.annotate_image_key(study.session_id, readers["Dr A"])).select(0).run()
    at.toggle(key=key("reveal", study, "noise.png")).set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    [refusal] = [e.value for e in at.error if "does not look like a frontal chest X-ray" in e.value]
    assert "looks like noise" in refusal and "high-frequency energy" in refusal
    assert model_output_on_page(at) == []
