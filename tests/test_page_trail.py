"""The audit-trail page under AppTest: filter by who, action, date and film hash; the CSV download is
itself recorded; other roles cannot open it."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
from streamlit.testing.v1 import AppTest

from auth_helpers import login
from conftest import REPO
from cxr_core import auth, storage

TIMEOUT = 120
FILM = "ab" * 32
OTHER = "cd" * 32


@pytest.fixture
def db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    factory = storage.session_factory(storage.make_engine(url))
    now = datetime.now(timezone.utc)
    with factory.begin() as s:
        auth.create_user(s, "Dr B", "sme", "long enough password")
        auth.record(s, "Dr B", "model_output_shown", film_sha=FILM, detail="review page: tiny-effnet",
                    at=now - timedelta(hours=1))
        auth.record(s, "Dr B", "reveal", film_sha=OTHER, detail="annotate page", at=now - timedelta(minutes=5))
        auth.record(s, "=cmd|' /C calc'!A0", "login_failed", detail="<b>x</b> **y**", at=now - timedelta(days=40))
    return factory


def open_trail() -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name="Admin A", role="admin")
    at.run()
    at.switch_page("pages/trail.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rows(at: AppTest) -> list[dict]:
    return at.dataframe[0].value.to_dict("records")


def test_the_last_30_days_newest_first_and_filters(db):
    at = open_trail()
    assert at.title[0].value == "Audit trail" and "administrators" in at.caption[0].value
    shown = [r for r in rows(at) if r["Who"] == "Dr B"]  # (the test's own logins are newer)
    assert [r["Action"] for r in shown] == ["reveal", "model_output_shown"]
    assert "login_failed" not in [r["Action"] for r in rows(at)]  # 40 days ago: outside the default dates
    assert shown[0]["Film"] == OTHER[:16] and shown[0]["Who"] == "Dr B"

    at.selectbox(key="trail_action").select("model_output_shown").run()
    assert [(r["Who"], r["Detail"]) for r in rows(at)] == [("Dr B", "review page: tiny-effnet")]
    at.selectbox(key="trail_action").select("(any action)")
    at.text_input(key="trail_film").input(OTHER[:8]).run()
    assert [r["Action"] for r in rows(at)] == ["reveal"]
    at.text_input(key="trail_film").input("zz").run()
    assert "at least 6 hex digits" in at.error[0].value and not at.dataframe
    at.text_input(key="trail_film").input("")
    at.selectbox(key="trail_who").select("Dr B").run()
    assert [r["Action"] for r in rows(at)] == ["reveal", "model_output_shown"]
    at.selectbox(key="trail_who").select("Admin A").run()
    assert at.info[0].value == "No event matches these filters." and not at.dataframe
    at.selectbox(key="trail_who").select("(anyone)")
    today = datetime.now(timezone.utc).date()
    at.date_input(key="trail_dates").set_value((today - timedelta(days=60), today - timedelta(days=30))).run()
    assert [(r["Action"], r["Detail"]) for r in rows(at)] == [("login_failed", "<b>x</b> **y**")]  # as typed
    assert not [m for m in at.markdown if "**y**" in m.value]


def test_the_csv_is_neutralised_and_its_download_recorded(db):
    at = open_trail()
    at.selectbox(key="trail_action").select("login_failed")
    at.date_input(key="trail_dates").set_value(()).run()
    button = at.download_button(key="trail_csv")
    assert button.proto.label == "Download these events (CSV)"
    with db() as s:
        body = auth.events_csv(auth.events(s, action="login_failed"))
    parsed = list(csv.DictReader(io.StringIO(body)))
    assert parsed[0]["who"] == "'=cmd|' /C calc'!A0"  # a spreadsheet shows it, never runs it
    button.click().run()
    assert not at.exception
    with db() as s:
        exports = auth.events(s, action="export")
    assert [(e.who, e.detail.split(":")[0]) for e in exports] == [("Admin A", "audit-trail.csv")]
    assert "1 audit event(s)" in exports[0].detail and "action=login_failed" in exports[0].detail


@pytest.mark.parametrize("role", [r for r in auth.ROLES if not auth.can(r, "page:trail")])
def test_other_roles_cannot_open_it(db, role):
    at = AppTest.from_file(str(REPO / "pages" / "trail.py"), default_timeout=TIMEOUT)
    login(at, name=f"{role} user", role=role)
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and f"Your role ({role}) may not" in at.error[0].value
    assert not at.title and not at.dataframe
