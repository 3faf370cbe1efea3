"""The sessions page under AppTest: readers with roles, sessions from uploads, samples or a folder, progress,
and each film screened as the review page screens it before the session is made (issue 12)."""

from __future__ import annotations

import io
import json
import logging
import shutil

import numpy as np
import pytest
import skimage.data
from PIL import Image
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from auth_helpers import PASSWORD, login
from conftest import FIXTURES, REPO
from cxr_core import auth
from cxr_core.io.film_facts import film_label
from cxr_core.io.imaging import load_xray
from cxr_core.io.plain_text import md_escape
from cxr_core import annotation as ann
from cxr_core import storage
from cxr_core.safety import intake
from cxr_core.safety.detector import DETECTOR_REASON
from cxr_core.config import Settings
from ui import sessions

TIMEOUT = 120
CXR = sorted(p.name for p in (FIXTURES / "cxr").glob("*.png"))  # 4 real films


@pytest.fixture
def db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    return storage.session_factory(storage.make_engine(url))


@pytest.fixture
def samples_dir(tmp_path, monkeypatch):
    """An empty bundled-samples folder in place of data/samples."""
    folder = tmp_path / "samples"
    folder.mkdir()
    monkeypatch.setattr(Settings, "samples_dir", property(lambda self: folder))
    return folder


def open_sessions() -> AppTest:
    """The sessions page for the administrator Ada, logged in (created if need be)."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name="Ada", role="admin")
    at.run()
    at.switch_page("pages/sessions.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def progress(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def create(at: AppTest, name: str, readers: list[str], *, source: str, shuffle: bool = True) -> None:
    at.text_input(key=sessions.SESSIONS_NAME).input(name)
    at.multiselect(key=sessions.SESSIONS_READERS).set_value(readers)
    at.checkbox(key=sessions.SESSIONS_SHUFFLE).set_value(shuffle)
    at.radio(key=sessions.SESSIONS_SOURCE).set_value(source).run()


def click_create(at: AppTest) -> None:
    next(b for b in at.button if b.label == "Create session").click().run()
    assert not at.exception, [e.value for e in at.exception]


def test_readers_are_the_enabled_users_who_may_annotate_and_none_is_added_here(db):
    with db.begin() as s:
        auth.create_user(s, "Dr A", "sme", PASSWORD)
        auth.create_user(s, "Rev", "reviewer", PASSWORD)
        auth.create_user(s, "Res", "researcher", PASSWORD)
        auth.create_user(s, "Dr Off", "sme", PASSWORD)
        auth.create_user(s, "Ada", "admin", PASSWORD)
        auth.disable_user(s, "Dr Off")
    at = open_sessions()
    assert "administrators" in at.caption[0].value and "not diagnoses" in at.caption[0].value
    assert at.dataframe[0].value.to_dict("list") == {"Name": ["Ada", "Dr A"], "Role": ["admin", "sme"]}
    assert "New reader's name" not in [x.label for x in at.text_input]  # users are added on the Users page only
    assert not [b for b in at.button if b.label == "Add reader"]
    assert "Created by (administrator)" not in [x.label for x in at.selectbox]  # the logged-in administrator
    assert at.multiselect(key=sessions.SESSIONS_READERS).options == ["Ada (admin)", "Dr A (sme)"]


def test_session_from_uploads_skips_unreadable_files_and_shows_progress_per_reader(db):
    with db.begin() as s:
        admin = storage.add_reader(s, "Ada", "admin").id
        a, b = (storage.add_reader(s, n, "sme").id for n in ("Dr A", "Dr B"))
    at = open_sessions()
    create(at, "Uploads 1", ["Dr A", "Dr B"], source="Uploaded files")
    files = [(n, (FIXTURES / "cxr" / n).read_bytes(), "image/png") for n in CXR[:3]]
    uploads = [*files, ("notes.txt", b"not an image", "text/plain")]
    at.file_uploader(key=sessions.SESSIONS_UPLOADS).set_value(uploads).run()
    click_create(at)
    assert at.success[0].value == (r"Created session \'Uploads 1\': 3 image(s), 2 reader(s), each in their own order. "
                                   + md_escape("Left out 1 file(s) that could not be read: notes.txt."))
    with db.begin() as s:
        changes = [(e.who, e.detail) for e in auth.events(s, action="session_change")]
    assert changes == [("Ada", "created session 'Uploads 1' (blind): 3 film(s), readers 'Dr A', 'Dr B'")]
    assert progress(at) == ["Dr A: 0 of 3 done", "Dr B: 0 of 3 done"]
    with db.begin() as s:
        session = storage.get_session(s, "Uploads 1")
        assert (session.blind, session.created_by) == (True, admin)
        queues = [storage.reader_queue(s, session.id, r) for r in (a, b)]
    assert [q.total for q in queues] == [3, 3]

    # A submitted reading shows in that reader's progress.
    entry = queues[0].entries[0]
    with db.begin() as s:
        storage.submit_annotation(s, reader_id=a, image_sha=entry.image_sha, session_id=session.id, diagnosis="Normal",
                                  confidence=5, canvas_json={"objects": []}, canvas_width=600, canvas_height=600)
    at.run()
    assert progress(at) == ["Dr A: 1 of 3 done", "Dr B: 0 of 3 done"]


def test_unreadable_uploads_are_named_and_a_session_needs_readers(db):
    with db.begin() as s:
        storage.add_reader(s, "Ada", "admin")
    at = open_sessions()
    create(at, "Bad", [], source="Uploaded files")
    at.file_uploader(key=sessions.SESSIONS_UPLOADS).set_value([("notes.txt", b"not an image", "text/plain")]).run()
    assert any(w.value.startswith(r"Your file **notes\.txt** is not readable and is left out: not an image")
               for w in at.warning)
    click_create(at)
    assert at.error[0].value == "Session not created: no readers chosen; a session needs at least one reader"
    at.multiselect(key=sessions.SESSIONS_READERS).set_value(["Ada"]).run()
    click_create(at)
    assert at.error[0].value.startswith("Session not created: no film left to put in the session")
    with db.begin() as s:
        assert storage.list_sessions(s) == []


def test_bundled_samples_missing_are_explained_and_present_ones_carry_their_labels(db, samples_dir):
    with db.begin() as s:
        storage.add_reader(s, "Ada", "admin")
        storage.add_reader(s, "Dr A", "sme")
    at = open_sessions()
    create(at, "Samples", ["Dr A"], source="Bundled samples")
    assert "No bundled samples are installed" in at.info[0].value

    for name in CXR[:2]:
        shutil.copy(FIXTURES / "cxr" / name, samples_dir / name)
    (samples_dir / "samples.json").write_text(json.dumps([{"file": CXR[0], "label": "COVID-19"},
                                                          {"file": CXR[1], "label": "Normal"}]))
    at.run()
    assert at.multiselect(key=sessions.SESSIONS_SAMPLES).value == CXR[:2]
    click_create(at)
    assert at.success[0].value.startswith(r"Created session \'Samples\': 2 image(s), 1 reader(s)")
    with db.begin() as s:
        session = storage.get_session(s, "Samples")
        shas = [e.image_sha for e in storage.reader_queue(s, session.id, storage.get_reader(s, "Dr A").id).entries]
        labels = sorted(storage.get_image(s, sha).reference_label for sha in shas)
    assert labels == ["COVID-19", "Normal"]


def test_session_from_a_server_folder_without_shuffle_keeps_one_order_and_readers_can_be_added(db, tmp_path,
                                                                                               monkeypatch):
    monkeypatch.setenv("CXR_IMPORT_ROOTS", str(tmp_path))
    folder = tmp_path / "batch"
    folder.mkdir()
    for name in CXR:
        shutil.copy(FIXTURES / "cxr" / name, folder / name)
    with db.begin() as s:
        storage.add_reader(s, "Ada", "admin")
        for n in ("Dr A", "Dr B", "Dr C"):
            storage.add_reader(s, n, "sme")
    at = open_sessions()
    create(at, "Folder", ["Dr A", "Dr B"], source="A folder on the server", shuffle=False)
    at.text_input(key=sessions.SESSIONS_FOLDER).input(str(REPO / "tests" / "fixtures" / "cxr")).run()
    assert "outside the folders this server may read" in at.error[0].value  # real films, but not under a root
    at.text_input(key=sessions.SESSIONS_FOLDER).input(str(tmp_path / "missing")).run()
    click_create(at)
    assert "is not a folder on the server" in at.error[0].value
    at.text_input(key=sessions.SESSIONS_FOLDER).input(str(folder)).run()
    click_create(at)
    assert at.success[0].value.endswith("4 image(s), 2 reader(s), all in the same order.")
    with db.begin() as s:
        session = storage.get_session(s, "Folder")
        orders = [[e.image_sha for e in storage.reader_queue(s, session.id, storage.get_reader(s, n).id).entries]
                  for n in ("Dr A", "Dr B")]
    expected = [x.sha256 for x in ann.read_folder(folder).xrays]  # file-name order
    assert orders == [expected, expected]

    assign = at.multiselect(key=f"sessions_assign::{session.id}")
    assert assign.options == ["Ada", "Dr C"]
    assign.set_value(["Dr C"]).run()
    at.button(key=f"sessions_assign_button::{session.id}").click().run()
    assert progress(at) == ["Dr A: 0 of 4 done", "Dr B: 0 of 4 done", "Dr C: 0 of 4 done"]
    with db.begin() as s:
        assert auth.events(s, action="session_change")[-1].detail == "assigned 'Dr C' to session 'Folder'"


# --- screening before the session is made (issue 12) ---------------------------------------------


def _png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


#: Non-chest uploads and words of the reason each is flagged for (the review page's refusals).
NOT_CHEST = {
    "photo.png": (_png_bytes(skimage.data.astronaut()), "This is a colour picture"),
    "document.png": (_png_bytes(skimage.data.page()), "looks like noise, text or a fine texture"),
}
CORRUPT = ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "image/png")


def mixed_uploads() -> list[tuple[str, bytes, str]]:
    """Two real chest films, a colour photograph, a document scan and a truncated PNG."""
    chest = [(n, (FIXTURES / "cxr" / n).read_bytes(), "image/png") for n in CXR[:2]]
    return [chest[0], *[(n, data, "image/png") for n, (data, _) in NOT_CHEST.items()], CORRUPT, chest[1]]


def screening_table(at: AppTest) -> dict[str, tuple[str, str]]:
    """Verdict and reason by file name (the column shown only to the administrator who chose the files)."""
    frame = at.dataframe[1].value  # after the readers
    return {f: (v, r) for f, v, r in zip(frame[sessions.SESSIONS_FILE_COLUMN], frame["Verdict"], frame["Reason"])}


def film_of(at: AppTest, name: str) -> str:
    """The label the screening table gives the file ``name`` (``film-<8 hex>``)."""
    frame = at.dataframe[1].value
    return dict(zip(frame[sessions.SESSIONS_FILE_COLUMN], frame["Film"]))[name]


def session_shas(db, name: str) -> set[str]:
    """The images of a stored session, straight from the database."""
    with db.begin() as s:
        session = storage.get_session(s, name)
        return set(s.scalars(select(storage.SessionImage.image_sha)
                             .where(storage.SessionImage.session_id == session.id)))


def keep_box(at: AppTest, name: str):
    """The keep box of the file ``name``: labelled with the film's label, never the file name."""
    return next(c for c in at.checkbox if c.label == f"Keep {film_of(at, name)} in the session anyway")


def test_uploads_are_screened_flagged_films_dropped_by_default_and_kept_on_request(db, monkeypatch, caplog):
    decoded: list[str] = []
    real_decode = intake.IntakeFile.decode
    monkeypatch.setattr(intake.IntakeFile, "decode", lambda self: decoded.append(self.name) or real_decode(self))
    with db.begin() as s:
        storage.add_reader(s, "Ada", "admin")
        storage.add_reader(s, "Dr A", "sme")
    at = open_sessions()
    create(at, "Screened", ["Dr A"], source="Uploaded files")
    at.file_uploader(key=sessions.SESSIONS_UPLOADS).set_value(mixed_uploads()).run()
    assert not at.exception, [e.value for e in at.exception]

    # Every file is listed with its verdict; no model is installed, and the page says so.
    table = screening_table(at)
    assert [table[n][0] for n in CXR[:2]] == ["chest film", "chest film"]
    for name, (_, words) in NOT_CHEST.items():
        assert table[name][0] == "flagged: not a frontal chest X-ray" and words in table[name][1], table[name]
    assert table["broken.png"][0] == "not readable" and "PNG" in table["broken.png"][1]
    assert any("image checks" in c.value and "alone: no model is installed" in c.value for c in at.caption)
    assert any(m.value.startswith("**Screening of 5 file(s)**: 2 chest film(s), 2 flagged") for m in at.markdown)
    for name, (_, words) in NOT_CHEST.items():  # the reasons, in words, beside a keep box that starts unticked
        assert any(m.value.startswith(f"**{film_of(at, name)}** (your file *{md_escape(name)}*) does not look "
                                      "like a frontal chest X-ray")
                   and words in m.value
                   for m in at.markdown)
        assert keep_box(at, name).value is False
    assert any(w.value.startswith(r"Your file **broken\.png** is not readable and is left out:") for w in at.warning)
    assert film_of(at, "broken.png") == "(none)" and film_of(at, CXR[0]).startswith("film-")
    assert any("never stored" in c.value for c in at.caption)
    assert sorted(decoded) == sorted(n for n, _, _ in mixed_uploads())  # each file decoded once...
    at.run()
    assert len(decoded) == 5  # ...and not again on a rerun (verdicts cached by content)
    assert any(c.value == "2 film(s) will go into the session." for c in at.caption)

    # Default: flagged films are dropped; only the chest films are stored, and the message counts the rest.
    decoded.clear()
    click_create(at)
    assert sorted(decoded) == sorted(CXR[:2])  # only the chosen films are decoded again, to be stored
    photo, document = (film_label(load_xray(NOT_CHEST[n][0]).sha256) for n in ("photo.png", "document.png"))
    assert at.success[0].value == (
        r"Created session \'Screened\': 2 image(s), 1 reader(s), each in their own order. " + md_escape(
            f"Dropped 2 film(s) flagged as not a frontal chest X-ray: {photo}, {document}. Left out 1 file(s) that "
            "could not be read: broken.png."))
    chest_shas = {load_xray(FIXTURES / "cxr" / n).sha256 for n in CXR[:2]}
    assert session_shas(db, "Screened") == chest_shas

    # Keeping the photograph puts it in the next session, and the override is logged.
    keep_box(at, "photo.png").check().run()
    assert any(c.value == "3 film(s) will go into the session." for c in at.caption)
    at.text_input(key=sessions.SESSIONS_NAME).input("Screened, photo kept").run()
    for box in [c for c in at.checkbox if c.label.startswith("Black out the burned-in text")]:
        box.uncheck()  # the photograph has text-like marks: stored as it came here (test_redaction.py covers that)
    at.run()
    with caplog.at_level(logging.WARNING, logger="cxr_core.safety.screening"):
        click_create(at)
    assert md_escape(f"Dropped 1 film(s) flagged as not a frontal chest X-ray: {document}. Kept 1 flagged film(s) by "
                     f"your choice: {photo}. Left out 1 file(s) that could not be read: broken.png.") in at.success[0].value
    assert at.success[0].value.endswith(md_escape(f"Left the burned-in text on 1 film(s) by your choice: {photo}."))
    photo_sha = load_xray(NOT_CHEST["photo.png"][0], "photo.png").sha256
    assert session_shas(db, "Screened, photo kept") == chest_shas | {photo_sha}
    with db.begin() as s:
        overrides = [(e.who, e.film_sha, e.detail) for e in auth.events(s, action="refusal_override")]
    label = film_label(photo_sha)  # the trail and the log name the film by its label, never its file name
    assert overrides == [("Ada", photo_sha, f"sessions page: {label} kept in session 'Screened, photo kept' although "
                                            "flagged as not a frontal chest X-ray")]
    logged = [m for m in caplog.messages if "expert override" in m and "sessions page" in m]
    assert len(logged) == 1 and label in logged[0] and "photo.png" not in logged[0]
    assert "This is a colour picture" in logged[0] and "Ada" in logged[0]


def test_a_folder_of_only_unusable_files_makes_no_session_until_a_film_is_kept(db, tmp_path, use_registry,
                                                                               monkeypatch):
    monkeypatch.setenv("CXR_IMPORT_ROOTS", str(tmp_path))
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "document.png").write_bytes(NOT_CHEST["document.png"][0])
    (folder / "broken.png").write_bytes(CORRUPT[1])
    with db.begin() as s:
        storage.add_reader(s, "Ada", "admin")
        storage.add_reader(s, "Dr A", "sme")
    at = open_sessions()
    create(at, "Folder", ["Dr A"], source="A folder on the server")
    at.text_input(key=sessions.SESSIONS_FOLDER).input(str(folder)).run()
    assert screening_table(at)["document.png"][0] == "flagged: not a frontal chest X-ray"
    assert any("alone: **tiny-effnet** (the review page's default model) has no out-of-distribution detector"
               in c.value for c in at.caption)
    click_create(at)
    assert at.error[0].value.startswith("Session not created: no film left to put in the session")
    with db.begin() as s:
        assert storage.list_sessions(s) == []
    keep_box(at, "document.png").check().run()
    click_create(at)
    assert at.success[0].value.startswith(r"Created session \'Folder\': 1 image(s), 1 reader(s)")
    document = film_label(load_xray(NOT_CHEST["document.png"][0]).sha256)
    assert md_escape(f"Kept 1 flagged film(s) by your choice: {document}.") in at.success[0].value
    assert len(session_shas(db, "Folder")) == 1


def test_the_demo_models_detector_screens_the_films(db, tiny_registry, tmp_path, monkeypatch):
    """With a demo model that has an out-of-distribution detector, intake asks it (here one that refuses all)."""
    from cxr_core.models.manifest import read_card, write_card
    from cxr_core.safety.detector import FeatureOOD
    from cxr_core.safety.screening import LUNG_FEATURES, save_detector

    weights = tmp_path / "weights"
    folder = weights / "tiny-demo"
    shutil.copytree(tiny_registry / "tiny-effnet", folder)
    detector = FeatureOOD.fit(np.random.default_rng(0).random((8, 128)), method="knn", k=1, holdout=0.0)
    detector.threshold = -1.0  # every film lies beyond it: only the detector can flag a real chest film
    card = read_card(folder)
    card.name, card.demo = "tiny-demo", True
    card.extra["ood"] = save_detector(folder, detector, features=LUNG_FEATURES)
    write_card(folder, card)
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    with db.begin() as s:
        storage.add_reader(s, "Ada", "admin")
    at = open_sessions()
    create(at, "Detector", ["Ada"], source="Uploaded files")
    at.file_uploader(key=sessions.SESSIONS_UPLOADS).set_value([(CXR[0], (FIXTURES / "cxr" / CXR[0]).read_bytes(),
                                                          "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    verdict, reason = screening_table(at)[CXR[0]]
    assert verdict == "flagged: not a frontal chest X-ray"
    assert reason.startswith(DETECTOR_REASON[:40]), reason
    assert any("out-of-distribution detector of **tiny-demo** (the demo model)" in c.value for c in at.caption)


def test_a_name_planted_in_an_upload_file_name_is_shown_only_to_the_uploader_and_never_stored(db, tmp_path):
    """Issue 15: the page names films by label; the file name is shown to the administrator who chose the files,
    marked as such, and reaches neither the database nor the audit trail."""
    with db.begin() as s:
        storage.add_reader(s, "Ada", "admin")
    at = open_sessions()
    create(at, "Planted", ["Ada"], source="Uploaded files")
    planted = "Doe_Jane_MRN4711_19700101.png"
    data = (FIXTURES / "cxr" / CXR[0]).read_bytes()
    at.file_uploader(key=sessions.SESSIONS_UPLOADS).set_value([(planted, data, "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    film = film_label(load_xray(data).sha256)
    assert film_of(at, planted) == film  # the table's identifier is the label; the name sits in its own column
    assert sessions.SESSIONS_FILE_COLUMN == "Your file (shown only here)"
    click_create(at)
    assert at.success[0].value.startswith(r"Created session \'Planted\': 1 image(s)")
    assert "Doe_Jane" not in at.success[0].value
    with db.begin() as s:
        details = [e.detail for e in auth.events(s)]
        names = [i.original_name for i in s.scalars(select(storage.Image))]
    assert names == [film] and not [d for d in details if "Doe_Jane" in d or "MRN4711" in d]
    database = b"".join(p.read_bytes() for p in tmp_path.glob("annotations.db*"))
    assert len(database) > 10_000 and b"Doe_Jane" not in database and b"MRN4711" not in database
