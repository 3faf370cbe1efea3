"""Migration 0005 (users and the audit trail) on SQLite: readers from 0004 become users and keep their
sessions and annotations, through upgrade, downgrade and upgrade again; foreign keys hold throughout."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

import numpy as np
import pytest
from alembic import command
from sqlalchemy import MetaData, insert, inspect, text
from sqlalchemy.exc import DBAPIError
from test_migrations import _dump, _old_readers_and_session

from cxr_core import auth, storage
from cxr_core.storage.codec import encode_mask

TABLES = ("readers", "images", "annotation_sessions", "session_images", "session_readers", "queue_items",
          "annotations", "drafts", "model_results", "reading_starts")
USER_COLUMNS = {"password_hash", "disabled", "failed_logins", "locked_until"}


def _fill_at_0004(engine):
    """Two readers (one an admin) with a session and a submitted annotation each, written on 0004's tables."""
    pixels = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    with storage.session_factory(engine).begin() as s:
        sha = storage.add_image(s, pixels).sha256
    readers, sid = _old_readers_and_session(engine, sha, names=("dr-old", "boss-old"))
    with engine.begin() as conn:
        meta = MetaData()
        meta.reflect(conn, only=["readers", "annotations", "annotation_sessions"])
        conn.execute(meta.tables["readers"].update().where(meta.tables["readers"].c.id == readers[1])
                     .values(role="admin"))
        conn.execute(meta.tables["annotation_sessions"].update().values(created_by=readers[1]))
        mask = np.zeros((12, 10), bool)
        mask[2:5, 1:4] = True
        for i, reader in enumerate(readers, start=1):
            conn.execute(insert(meta.tables["annotations"]).values(
                id=i, reader_id=reader, image_sha=sha, session_id=sid, version=1, diagnosis="Normal", confidence=3,
                regions=[], canvas_json={"objects": []}, canvas_width=10, canvas_height=12, mask_png=encode_mask(mask),
                mask_area=int(mask.sum()), app_version="0.9", canvas_version="c", comment=f"by {reader}",
                created_at=datetime(2026, 11, 30, 10, i, tzinfo=timezone.utc)))
    return readers, sid, sha


def _to(engine, revision, how="downgrade"):
    with engine.begin() as conn:
        cfg = storage.alembic_config()
        cfg.attributes["connection"] = conn
        getattr(command, how)(cfg, revision)


def _clean(engine):
    with sqlite3.connect(engine.url.database) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []


def test_readers_and_annotations_survive_0004_to_0005_and_back(tmp_path):
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'm5.db'}", migrate=False)
    try:
        storage.init_db(engine, "0004")
        (dr, boss), sid, _ = _fill_at_0004(engine)
        before = _dump(engine, TABLES)

        storage.init_db(engine)
        assert storage.current_revision(engine) == "0006"
        _clean(engine)
        after = _dump(engine, TABLES)
        for table, rows in before.items():  # every row kept, ids included; only the user columns are new
            assert [{k: v for k, v in r.items() if k not in USER_COLUMNS} for r in after[table]] == rows, table
        assert [(r["password_hash"], r["disabled"], r["failed_logins"], r["locked_until"]) for r in after["readers"]] \
            == [(None, False, 0, None)] * 2
        factory = storage.session_factory(engine)
        with factory() as s:
            assert [(u.id, u.name, u.role) for u in auth.list_users(s)] == [(boss, "boss-old", "admin"),
                                                                            (dr, "dr-old", "sme")]
            assert not auth.admin_exists(s)  # the old admin has no password yet: the first-admin code applies
            assert [a.comment for a in storage.latest_annotations(s, session_id=sid)] == [f"by {dr}", f"by {boss}"]
        with pytest.raises(auth.LoginFailed), factory() as s:  # no default password
            auth.authenticate(s, "dr-old", "")
        with factory.begin() as s:
            auth.reset_password(s, "dr-old", "a password for dr old")
            auth.create_user(s, "rita", "researcher", "a password for rita")
        with factory() as s:
            assert auth.authenticate(s, "dr-old", "a password for dr old").id == dr  # the same reader, same id
        with pytest.raises(DBAPIError, match="CHECK constraint failed"):  # the role check is in SQL too
            with engine.begin() as conn:
                conn.execute(text("UPDATE readers SET role = 'boss' WHERE name = 'rita'"))
        with pytest.raises(DBAPIError, match="FOREIGN KEY constraint failed"):  # references still enforced
            with engine.begin() as conn:
                conn.execute(text(f"DELETE FROM readers WHERE id = {dr}"))
        with pytest.raises(DBAPIError, match="audit events are immutable"):
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM audit_events"))

        with pytest.raises(RuntimeError, match="1 reader.* researcher, which revision 0004 cannot store"):
            _to(engine, "0004")
        assert storage.current_revision(engine) == "0006"  # refused: nothing changed
        with factory.begin() as s:
            auth.set_role(s, "rita", "reviewer")
        _to(engine, "0004")
        assert storage.current_revision(engine) == "0004"
        _clean(engine)
        assert "audit_events" not in inspect(engine).get_table_names()
        assert USER_COLUMNS.isdisjoint(c["name"] for c in inspect(engine).get_columns("readers"))
        down = _dump(engine, TABLES)
        assert {t: rows for t, rows in down.items() if t != "readers"} == {
            t: rows for t, rows in before.items() if t != "readers"}
        assert down["readers"][:2] == before["readers"] and down["readers"][2]["name"] == "rita"
        with pytest.raises(DBAPIError, match="CHECK constraint failed"):  # 0004's role check is back
            with engine.begin() as conn:
                conn.execute(text("UPDATE readers SET role = 'researcher' WHERE name = 'rita'"))

        storage.init_db(engine)  # and up again
        assert storage.current_revision(engine) == "0006"
        _clean(engine)
        with factory() as s:
            assert [u.name for u in auth.list_users(s)] == ["boss-old", "dr-old", "rita"]
            assert len(storage.latest_annotations(s, session_id=sid)) == 2
    finally:
        engine.dispose()
