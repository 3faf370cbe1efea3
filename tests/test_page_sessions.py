"""The sessions page under AppTest: readers with roles, sessions from uploads, samples or a folder, progress."""

from __future__ import annotations

import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

import ui_state as ui
from conftest import FIXTURES, REPO
from cxr_core import annotation as ann
from cxr_core import storage
from cxr_core.config import Settings

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
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    at.switch_page("pages/sessions.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def add_reader(at: AppTest, name: str, role: str) -> None:
    at.text_input(key=ui.SESSIONS_NEW_READER).input(name)
    at.selectbox(key=ui.SESSIONS_NEW_ROLE).select(role)
    at.button[0].click().run()  # the form's submit button comes first on the page


def progress(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def create(at: AppTest, name: str, readers: list[str], *, source: str, shuffle: bool = True) -> None:
    at.text_input(key=ui.SESSIONS_NAME).input(name)
    at.multiselect(key=ui.SESSIONS_READERS).set_value(readers)
    at.checkbox(key=ui.SESSIONS_SHUFFLE).set_value(shuffle)
    at.radio(key=ui.SESSIONS_SOURCE).set_value(source).run()


def click_create(at: AppTest) -> None:
    next(b for b in at.button if b.label == "Create session").click().run()
    assert not at.exception, [e.value for e in at.exception]


def test_readers_are_added_with_roles_and_sessions_need_an_administrator(db):
    at = open_sessions()
    assert "administrators" in at.caption[0].value and "not diagnoses" in at.caption[0].value
    assert "No readers yet" in at.info[0].value
    add_reader(at, "Dr A", "sme")
    assert at.success[0].value == "Added Dr A (sme)."
    assert any("role **admin** to create sessions" in i.value for i in at.info)
    add_reader(at, "Dr A", "reviewer")
    assert "already exists" in at.error[0].value
    add_reader(at, "Ada", "admin")
    assert at.table[0].value.to_dict("list") == {"Name": ["Ada", "Dr A"], "Role": ["admin", "sme"]}
    assert at.selectbox(key=ui.SESSIONS_ADMIN).value == "Ada"
    with db.begin() as s:
        assert [(r.name, r.role) for r in storage.list_readers(s)] == [("Ada", "admin"), ("Dr A", "sme")]


def test_session_from_uploads_skips_unreadable_files_and_shows_progress_per_reader(db):
    with db.begin() as s:
        admin = storage.add_reader(s, "Ada", "admin").id
        a, b = (storage.add_reader(s, n, "sme").id for n in ("Dr A", "Dr B"))
    at = open_sessions()
    create(at, "Uploads 1", ["Dr A", "Dr B"], source="Uploaded files")
    files = [(n, (FIXTURES / "cxr" / n).read_bytes(), "image/png") for n in CXR[:3]]
    at.file_uploader(key=ui.SESSIONS_UPLOADS).set_value([*files, ("notes.txt", b"not an image", "text/plain")]).run()
    click_create(at)
    assert at.success[0].value == "Created session 'Uploads 1': 3 image(s), 2 reader(s), each in their own order."
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
    at.file_uploader(key=ui.SESSIONS_UPLOADS).set_value([("notes.txt", b"not an image", "text/plain")]).run()
    click_create(at)
    assert at.warning[0].value.startswith("Skipped: notes.txt: not an image")
    assert at.error[0].value == "Session not created: no readers chosen; a session needs at least one reader"
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
    assert at.multiselect(key=ui.SESSIONS_SAMPLES).value == CXR[:2]
    click_create(at)
    assert at.success[0].value.startswith("Created session 'Samples': 2 image(s), 1 reader(s)")
    with db.begin() as s:
        session = storage.get_session(s, "Samples")
        shas = [e.image_sha for e in storage.reader_queue(s, session.id, storage.get_reader(s, "Dr A").id).entries]
        labels = sorted(storage.get_image(s, sha).reference_label for sha in shas)
    assert labels == ["COVID-19", "Normal"]


def test_session_from_a_server_folder_without_shuffle_keeps_one_order_and_readers_can_be_added(db, tmp_path):
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
    at.text_input(key=ui.SESSIONS_FOLDER).input(str(tmp_path / "missing")).run()
    click_create(at)
    assert "is not a folder on the server" in at.error[0].value
    at.text_input(key=ui.SESSIONS_FOLDER).input(str(folder)).run()
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
