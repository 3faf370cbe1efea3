"""The audit trail: append-only at the ORM and in SQL, filters, CSV that a spreadsheet cannot run."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from cxr_core import auth, storage
from cxr_core.storage.schema import AuditEvent, ImmutableAuditEventError

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
SHA_A = "a" * 64
SHA_B = "b" * 63 + "c"


@pytest.fixture
def db(tmp_path):
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'trail.db'}")
    factory = storage.session_factory(engine)
    with factory.begin() as s:
        auth.record(s, "dr-a", "login", at=T0)
        auth.record(s, "dr-a", "model_output_shown", film_sha=SHA_A, detail="demo model", at=T0 + timedelta(minutes=1))
        auth.record(s, "dr-b", "reveal", film_sha=SHA_A, detail="after reading", at=T0 + timedelta(minutes=2))
        auth.record(s, "dr-b", "export", film_sha=SHA_B, detail="=HYPERLINK(\"http://x\")", at=T0 + timedelta(hours=1))
        auth.record(s, None, "user_change", detail="@added by operator", at=T0 + timedelta(hours=2))
    yield factory
    engine.dispose()


def test_events_come_back_in_order_with_every_field(db):
    with db() as s:
        evts = auth.events(s)
    assert [(e.who, e.action, e.film_sha) for e in evts] == [
        ("dr-a", "login", None), ("dr-a", "model_output_shown", SHA_A), ("dr-b", "reveal", SHA_A),
        ("dr-b", "export", SHA_B), (None, "user_change", None)]
    assert evts[1].detail == "demo model" and evts[1].at == T0 + timedelta(minutes=1)
    assert evts[1].at.tzinfo is not None


def test_filters(db):
    with db() as s:
        def who(**kw):
            return [(e.who, e.action) for e in auth.events(s, **kw)]

        assert who(who="dr-b") == [("dr-b", "reveal"), ("dr-b", "export")]
        assert who(action="reveal") == [("dr-b", "reveal")]
        assert who(film_sha=SHA_A) == [("dr-a", "model_output_shown"), ("dr-b", "reveal")]
        assert who(film_sha=SHA_B[:8].upper()) == [("dr-b", "export")]  # a prefix, as the pages show hashes
        assert who(since=T0 + timedelta(minutes=2), until=T0 + timedelta(hours=2)) == [
            ("dr-b", "reveal"), ("dr-b", "export")]  # since inclusive, until exclusive
        assert who(since=datetime(2026, 12, 1, 9, 0)) == [("dr-b", "export"), (None, "user_change")]  # naive = UTC
        assert who(who="dr-a", action="reveal") == []
        assert who(limit=2) == [("dr-b", "export"), (None, "user_change")]  # the newest, still oldest first
        with pytest.raises(auth.TrailError, match="audit action 'peek'"):
            auth.events(s, action="peek")
        with pytest.raises(auth.TrailError, match="at least 6 hex digits"):
            auth.events(s, film_sha="ab")


def test_bad_events_are_refused_and_nothing_is_written(db):
    with db.begin() as s:
        with pytest.raises(auth.TrailError, match="audit action 'hack'; expected one of login, login_failed"):
            auth.record(s, "x", "hack")
        with pytest.raises(auth.TrailError, match="expected 64 lower-case hex digits"):
            auth.record(s, "x", "reveal", film_sha="abc")
    with db() as s:
        assert len(auth.events(s)) == 5


def test_orm_refuses_update_and_delete(db):
    with db.begin() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "reveal")).one()
        event.detail = "nothing to see"
        with pytest.raises(ImmutableAuditEventError, match="cannot change"):
            s.flush()
    with db.begin() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "reveal")).one()
        s.delete(event)
        with pytest.raises(ImmutableAuditEventError, match="cannot be deleted"):
            s.flush()
    with db() as s:
        assert [e.detail for e in auth.events(s, action="reveal")] == ["after reading"]


def test_sql_refuses_update_and_delete_whatever_the_client(db):
    engine = db.kw["bind"]
    for statement in ("UPDATE audit_events SET who = 'someone else'", "DELETE FROM audit_events",
                      "DELETE FROM audit_events WHERE action = 'reveal'"):
        with pytest.raises(DBAPIError, match="audit events are immutable"):
            with engine.begin() as conn:
                conn.execute(text(statement))
    with pytest.raises(DBAPIError, match="immutable"):  # a bulk ORM update goes straight to SQL: the trigger stops it
        with db.begin() as s:
            s.execute(update(AuditEvent).values(detail="x"))
    with db() as s:
        assert [e.who for e in auth.events(s)] == ["dr-a", "dr-a", "dr-b", "dr-b", None]


def test_csv_export_is_neutralised_and_complete(db):
    with db() as s:
        out = auth.events_csv(auth.events(s))
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["id", "at", "who", "action", "film_sha", "detail"]
    assert len(rows) == 6
    assert rows[2][1:] == ["2026-12-01T08:01:00+00:00", "dr-a", "model_output_shown", SHA_A, "demo model"]
    assert rows[4][5] == "'=HYPERLINK(\"http://x\")"  # would run as a formula in a spreadsheet otherwise
    assert rows[5][2] == "" and rows[5][5] == "'@added by operator"
    assert auth.events_csv([]).splitlines() == ["id,at,who,action,film_sha,detail"]
