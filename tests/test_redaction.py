"""Burned-in text on intake (issue 15): found when a session's films are screened, blacked out on the
administrator's choice before readers see the film, recorded in the audit trail; the stored film (what
galleries and exports use) is the redacted one, and the blind gate's near-copy check still knows the original."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from auth_helpers import PASSWORD, login
from conftest import FIXTURES, REPO
from cxr_core import auth, storage
from cxr_core.io.film_facts import film_label
from cxr_core.io.imaging import load_xray
from cxr_core.io.plain_text import md_escape
from cxr_core.safety import blinding, intake, redaction
from cxr_core.safety.near_copy import near_copies, perceptual_hash
from cxr_core.safety.ood import OODDecision
from cxr_core.safety.redaction import redact, text_boxes
from ui import sessions

FILM = FIXTURES / "audit" / "hannover_4fed5061.png"  # a real film; its only burned-in mark is a side marker
LINES = (("DOE_JANE_4711_19700101", (20, 40)), ("DOB 1970-01-01", (20, 70)))


def clean8() -> np.ndarray:
    return np.round(load_xray(FILM).pixels * 255).astype(np.uint8)


def with_text() -> np.ndarray:
    img = clean8()
    for text, org in LINES:
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 2)  # (x, y) for OpenCV
    return img


def png(img8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, format="PNG")
    return buf.getvalue()


def chest_ok(xray):
    return OODDecision(True, [])


def test_text_lines_are_found_and_blacked_out_completely_leaving_the_rest():
    clean, drawn = clean8(), with_text()
    boxes = text_boxes(drawn / 255.0)
    assert len(boxes) == 2 and all(r1 - r0 < 20 for r0, _, r1, _ in boxes)  # one box per line
    assert text_boxes(clean / 255.0) == ()  # the side marker "R" is not text: readers need the side
    out = redact(drawn / 255.0, boxes)
    written = drawn != clean
    assert written.sum() > 1000 and not (out[written] > 0).any()  # every drawn pixel is black now
    inside = np.zeros(clean.shape, bool)
    for r0, c0, r1, c1 in boxes:
        inside[max(0, r0 - 3):r1 + 3, max(0, c0 - 3):c1 + 3] = True
    np.testing.assert_array_equal(out[~inside], drawn[~inside] / 255.0)  # nothing else changed
    assert inside.mean() < 0.05
    assert (drawn == with_text()).all()  # the input is left alone


def test_redacted_film_is_stored_under_its_own_hash_and_recorded(tmp_path):
    factory = storage.session_factory(storage.make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
    files = intake.from_uploads([("with_text.png", png(with_text())), ("clean.png", png(clean8()))])
    screened = intake.screen_files(files, chest_ok)
    assert [(x.name, x.has_text) for x in screened] == [("with_text.png", True), ("clean.png", False)]
    assert screened[0].thumb is not None and screened[1].thumb is None  # shown to the administrator
    original = screened[0].image_sha
    with factory.begin() as s:
        admin = auth.create_user(s, "Ada", "admin", PASSWORD)
        reader = storage.add_reader(s, "Dr A", "sme")
        result = intake.create_session(s, name="Redacted", files=files, screened=screened, reader_ids=[reader.id],
                                       created_by=admin.id, by="Ada", redact=[screened[0].ident])
        sid = result.session.id
    [done] = result.redacted
    assert done.original_sha == original and done.redacted_sha != original
    assert "Blacked out burned-in text on 1 film(s)" in result.summary()
    with factory() as s:
        shas = {i.image_sha for i in s.scalars(select(storage.SessionImage)
                                               .where(storage.SessionImage.session_id == sid))}
        assert shas == {done.redacted_sha, screened[1].image_sha}  # the original is not stored at all
        assert storage.get_image(s, original) is None
        stored = storage.load_pixels(s, done.redacted_sha)  # what readers, galleries and exports get
        events = auth.events(s, action="session_change")
    expected = redact(with_text() / 255.0, screened[0].text)
    np.testing.assert_allclose(stored, expected, atol=1 / 255)
    assert not (stored[with_text() != clean8()] > 0).any()
    [event] = events
    assert (event.who, event.film_sha) == ("Ada", done.redacted_sha)
    assert "burned-in text redacted: 2 box(es)" in event.detail and original in event.detail
    assert "with_text" not in event.detail  # hashes and labels only

    # the blind gate: loading the unredacted original while the redacted film is pending hides model output
    with factory() as s:
        assert s.get(storage.Redaction, done.redacted_sha).source_sha == original
        for sha in (original, done.redacted_sha):
            decision = blinding.model_output_decision(s, reader.id, sha)
            assert not decision.allowed and decision.pending_sessions == ("Redacted",), sha
        query = perceptual_hash(load_xray(png(with_text())).pixels)  # too far for the near-copy check alone
        assert near_copies(query, {done.redacted_sha: perceptual_hash(stored)}) == {}


def test_without_the_choice_the_film_is_stored_as_it_came(tmp_path):
    factory = storage.session_factory(storage.make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
    files = intake.from_uploads([("with_text.png", png(with_text()))])
    screened = intake.screen_files(files, chest_ok)
    with factory.begin() as s:
        reader = storage.add_reader(s, "Dr A", "sme")
        result = intake.create_session(s, name="As is", files=files, screened=screened, reader_ids=[reader.id])
        assert result.redacted == [] and storage.get_image(s, screened[0].image_sha) is not None
        [event] = auth.events(s, action="session_change")  # the choice to leave the text is recorded, with its boxes
        assert event.film_sha == screened[0].image_sha and "with_text" not in event.detail
        boxes = screened[0].text
        assert event.detail == (f"session 'As is': burned-in text left on {screened[0].film} by choice: "
                                f"{len(boxes)} box(es) {[list(b) for b in boxes]} not blacked out")
    assert result.text_left == [screened[0].film]
    assert result.summary() == f"Left the burned-in text on 1 film(s) by your choice: {screened[0].film}."


def test_outline_boxes_draws_each_text_box_scaled_onto_a_copy_of_the_thumbnail():
    from cxr_core.safety.redaction import OUTLINE, PAD, outline_boxes

    thumb = np.full((50, 100), 90, np.uint8)  # a 400x200 film (width x height) reduced 4x
    box = (40 + PAD, 80 + PAD, 80 - PAD, 200 - PAD)  # film rows 40-80, columns 80-200 once padded
    out = outline_boxes(thumb, [box], (400, 200))
    assert out.shape == (50, 100, 3) and out.dtype == np.uint8 and (thumb == 90).all()  # a copy
    red = (out == OUTLINE).all(axis=-1)
    assert red[10, 20:50].all() and red[19, 20:50].all()  # top and bottom edges: film rows 40 and 79, / 4
    assert red[10:20, 20].all() and red[10:20, 49].all()  # left and right edges: film columns 80 and 199, / 4
    assert not red[11:19, 21:49].any() and (out[11:19, 21:49] == 90).all()  # the inside is left as it was
    assert red.sum() == 2 * 30 + 2 * 8  # nothing else is drawn
    assert (outline_boxes(thumb, [], (400, 200)) == 90).all()


@pytest.fixture
def db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    return storage.session_factory(storage.make_engine(url))


def test_sessions_page_offers_redaction_and_stores_the_redacted_film(db, tmp_path, monkeypatch):
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "DOE_JANE_4711.png").write_bytes(png(with_text()))
    (folder / "clean.png").write_bytes(png(clean8()))
    monkeypatch.setenv("CXR_IMPORT_ROOTS", str(tmp_path))
    with db.begin() as s:
        auth.create_user(s, "Dr A", "sme", PASSWORD)
    drawn = []  # the page shows each film with text outlined: the boxes it draws are the ones detected
    real_outline = redaction.outline_boxes
    monkeypatch.setattr(redaction, "outline_boxes", lambda thumb, boxes, size: drawn.append((tuple(boxes), size))
                        or real_outline(thumb, boxes, size))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    login(at, name="Ada", role="admin")
    at.run()
    at.switch_page("pages/sessions.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.text_input(key=sessions.SESSIONS_NAME).input("Text check")
    at.multiselect(key=sessions.SESSIONS_READERS).set_value(["Dr A"])
    at.radio(key=sessions.SESSIONS_SOURCE).set_value("A folder on the server").run()
    at.text_input(key=sessions.SESSIONS_FOLDER).input(str(folder)).run()
    assert not at.exception, [e.value for e in at.exception]
    boxes = [c for c in at.checkbox if c.label.startswith("Black out the burned-in text")]
    film = film_label(load_xray(folder / "DOE_JANE_4711.png").sha256)
    assert [c.label for c in boxes] == [f"Black out the burned-in text on {film}"]  # the label, not the file name
    assert boxes[0].value is True  # redaction is the default
    found = load_xray(folder / "DOE_JANE_4711.png")
    assert drawn and set(drawn) == {(text_boxes(found.pixels), found.shape[::-1])} and len(drawn[0][0]) == 2
    captions = [c for image in at.image for c in image.captions]
    assert f"{film}: text outlined in red" in captions
    assert any("has burned-in text in 2 place(s)" in m.value for m in at.markdown)
    next(b for b in at.button if b.label == "Create session").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert md_escape("Blacked out burned-in text on 1 film(s)") in at.success[0].value
    original = load_xray(folder / "DOE_JANE_4711.png").sha256
    with db() as s:
        session = storage.get_session(s, "Text check")
        shas = {i.image_sha for i in s.scalars(select(storage.SessionImage)
                                               .where(storage.SessionImage.session_id == session.id))}
        assert original not in shas and len(shas) == 2
        events = [e for e in auth.events(s, action="session_change") if "redacted" in e.detail]
        names = [i.original_name for i in s.scalars(select(storage.Image))]
    assert len(events) == 1 and events[0].who == "Ada" and events[0].film_sha in shas
    assert all(n.startswith("film-") for n in names)  # stored under labels, never the file name
    assert f"2 box(es) blacked out {[list(b) for b in text_boxes(found.pixels)]}" in events[0].detail  # which boxes
    database = b"".join(p.read_bytes() for p in tmp_path.glob("annotations.db*"))  # with any journal or WAL:
    assert len(database) > 10_000  # the name planted in the file name is nowhere in it
    assert b"DOE_JANE" not in database and b"4711" not in database
