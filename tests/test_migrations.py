"""Alembic migrations: empty database to head, previous revision to head with data kept, ORM match."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError

from cxr_core import storage
from cxr_core.storage.codec import encode_mask
from cxr_core.storage.schema import Base


def test_revisions_form_one_line_ending_at_0006():
    script = ScriptDirectory.from_config(storage.alembic_config())
    assert script.get_heads() == ["0006"]
    assert [r.revision for r in script.walk_revisions()] == ["0006", "0005", "0004", "0003", "0002", "0001"]


def test_empty_database_upgrades_to_head(tmp_path):
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'empty.db'}", migrate=False)
    try:
        assert storage.current_revision(engine) is None
        storage.init_db(engine)
        assert storage.current_revision(engine) == "0006"
        tables = set(inspect(engine).get_table_names())
        assert tables == {"alembic_version", "readers", "images", "annotation_sessions", "session_images",
                          "session_readers", "queue_items", "annotations", "drafts", "model_results",
                          "reading_starts", "audit_events", "redactions"}
        storage.init_db(engine)  # already at head: nothing to do, nothing breaks
        assert storage.current_revision(engine) == "0006"
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_orm_models(tmp_path):
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'cmp.db'}")
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        engine.dispose()


OLD_TABLES = ("readers", "images", "annotation_sessions", "session_images", "session_readers", "queue_items",
              "annotations", "drafts", "model_results")


def _dump(engine, tables=OLD_TABLES):
    """Every row of every table as {table: [row dict, ...]} in primary-key order."""
    with engine.connect() as conn:
        meta = MetaData()
        meta.reflect(conn, only=list(tables))
        return {name: [dict(r._mapping) for r in conn.execute(select(meta.tables[name]).order_by(
                    *meta.tables[name].primary_key.columns))] for name in tables}


def _old_readers_and_session(engine, sha, names=("old-timer", "second")):
    """Readers and a session "before" holding ``sha`` for them, written with Core on the old tables
    (the ORM's Reader has the columns of 0005); returns (reader ids, session id)."""
    created = datetime(2025, 11, 25, 9, tzinfo=timezone.utc)
    with engine.begin() as conn:
        meta = MetaData()
        meta.reflect(conn, only=["readers", "annotation_sessions", "session_images", "session_readers",
                                 "queue_items"])
        t = meta.tables
        readers = [conn.execute(insert(t["readers"]).values(name=n, role="sme", created_at=created))
                   .inserted_primary_key[0] for n in names]
        sid = conn.execute(insert(t["annotation_sessions"]).values(
            name="before", blind=True, seed=1, created_by=None, created_at=created)).inserted_primary_key[0]
        conn.execute(insert(t["session_images"]).values(session_id=sid, image_sha=sha, position=0))
        for r in readers:
            conn.execute(insert(t["session_readers"]).values(session_id=sid, reader_id=r))
            conn.execute(insert(t["queue_items"]).values(session_id=sid, reader_id=r, position=0, image_sha=sha))
    return readers, sid


def _fill_at_0002(engine):
    """Readers, an image, a session, annotations (a revision among them) and drafts, written with
    the 0002 tables as code of that revision would; returns (session id, reader ids, sha, masks by id)."""
    factory = storage.session_factory(engine)
    pixels = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    with factory.begin() as s:
        sha = storage.add_image(s, pixels).sha256
    readers, sid = _old_readers_and_session(engine, sha)
    masks = {}
    with engine.begin() as conn:
        meta = MetaData()
        meta.reflect(conn, only=["annotations", "drafts"])
        annotations, drafts = meta.tables["annotations"], meta.tables["drafts"]
        assert "exclusion" not in annotations.c and "confidence" in annotations.c
        rect = {"type": "Rect", "left": 1, "top": 2, "width": 3, "height": 4, "originX": "left", "originY": "top",
                "strokeWidth": 0, "label": "opacity"}
        for ann_id, reader, version, supersedes, diagnosis, rows in (
            (1, readers[0], 1, None, "Normal", slice(2, 6)), (2, readers[0], 2, 1, "Pneumonia", slice(3, 9)),
            (3, readers[1], 1, None, "uncertain", slice(0, 0)),
        ):
            mask = np.zeros((12, 10), bool)
            mask[rows, 1:4] = True
            masks[ann_id] = mask
            conn.execute(insert(annotations).values(
                id=ann_id, reader_id=reader, image_sha=sha, session_id=sid, version=version, supersedes_id=supersedes,
                diagnosis=diagnosis, confidence=version + 1, regions=[{"index": 0, "label": "opacity"}],
                canvas_json={"objects": [rect]}, canvas_width=10, canvas_height=12, background_fit=None,
                mask_png=encode_mask(mask), mask_area=int(mask.sum()), app_version="0.0.9",
                canvas_version="drawable-canvas 0.13.0; fabric 7.4.0", comment=f"c{ann_id}",
                created_at=datetime(2025, 11, 26, 10, ann_id, tzinfo=timezone.utc)))
        conn.execute(insert(drafts).values(
            reader_id=readers[1], image_sha=sha, session_id=sid, canvas_json={"objects": [rect]}, canvas_width=10,
            canvas_height=12, labels=["opacity"], diagnosis="Normal", confidence=None,
            updated_at=datetime(2025, 11, 27, tzinfo=timezone.utc)))
    return sid, readers, sha, masks


def test_previous_revision_upgrades_with_its_data_kept(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = storage.make_engine(url, migrate=False)
    storage.init_db(engine, "0002")
    assert "reading_starts" not in inspect(engine).get_table_names()
    sid, (r0, r1), sha, masks = _fill_at_0002(engine)
    before = _dump(engine)
    assert [len(before[t]) for t in ("annotations", "drafts")] == [3, 1]
    engine.dispose()

    engine = storage.make_engine(url)  # upgrades on open
    try:
        assert storage.current_revision(engine) == "0006"
        after = _dump(engine)
        new_columns = {"annotations": ("exclusion", "shown_at"), "drafts": ("exclusion", "comment"),
                       "readers": ("password_hash", "disabled", "failed_logins", "locked_until")}
        defaults = {"disabled": False, "failed_logins": 0}  # new columns are NULL but for these
        for table, rows in before.items():
            added = new_columns.get(table, ())
            assert [{k: v for k, v in row.items() if k not in added} for row in after[table]] == rows, table
            assert all(row[c] == defaults.get(c) for row in after[table] for c in added), table
        with sqlite3.connect(engine.url.database) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
        factory = storage.session_factory(engine)
        with factory() as s:
            history = storage.annotation_history(s, reader_id=r0, image_sha=sha, session_id=sid)
            assert [(a.id, a.version, a.supersedes_id, a.diagnosis, a.confidence) for a in history] == [
                (1, 1, None, "Normal", 2), (2, 2, 1, "Pneumonia", 3)]
            for ann in s.scalars(select(storage.Annotation)):
                assert np.array_equal(storage.annotation_mask(ann), masks[ann.id])
                assert (ann.exclusion, ann.shown_at) == (None, None)
            assert [(e.version, e.has_draft, e.excluded) for e in storage.reader_queue(s, sid, r1).entries] == [
                (1, True, False)]
        with factory.begin() as s:  # the new columns and table work alongside the old rows
            when = storage.record_shown(s, reader_id=r0, image_sha=sha, session_id=sid)
            v3 = storage.revise_annotation(s, 2, exclusion="not readable")
            assert (v3.version, v3.supersedes_id, v3.diagnosis, v3.shown_at) == (3, 2, storage.EXCLUDED, when)
            assert v3.mask_area == 12  # re-rasterised from the kept canvas (the 3 x 4 rectangle)
        with pytest.raises(DBAPIError, match="immutable"):  # the immutability triggers survived the rebuild
            with engine.begin() as conn:
                conn.execute(text("UPDATE annotations SET confidence = 1"))
        with pytest.raises(DBAPIError, match="immutable"):
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM annotations WHERE id = 3"))
        assert {ix["name"] for ix in inspect(engine).get_indexes("annotations")} == {
            "ix_annotations_reader_id", "ix_annotations_image_sha", "ix_annotations_session_id"}
    finally:
        engine.dispose()


def test_downgrade_to_0002_keeps_rows_and_refuses_while_exclusions_exist(tmp_path):
    from alembic import command

    engine = storage.make_engine(f"sqlite:///{tmp_path / 'down2.db'}", migrate=False)
    storage.init_db(engine, "0002")
    sid, (r0, r1), sha, _ = _fill_at_0002(engine)
    before = _dump(engine)
    storage.init_db(engine)

    def downgrade():
        with engine.begin() as conn:
            cfg = storage.alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")

    try:
        downgrade()
        assert storage.current_revision(engine) == "0002" and _dump(engine) == before
        assert not any(c["nullable"] for c in inspect(engine).get_columns("annotations") if c["name"] == "confidence")
        storage.init_db(engine)
        with storage.session_factory(engine).begin() as s:
            storage.revise_annotation(s, 3, exclusion="not a chest film")
        with pytest.raises(RuntimeError, match="1 annotation.* exclusions.* would lose them"):
            downgrade()
        assert storage.current_revision(engine) == "0006"
    finally:
        engine.dispose()


def test_downgrade_to_0001_and_back(tmp_path):
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'down.db'}")
    try:
        from alembic import command

        with engine.begin() as conn:
            cfg = storage.alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        assert storage.current_revision(engine) == "0001"
        assert "model_results" not in inspect(engine).get_table_names()
        storage.init_db(engine)
        assert "model_results" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_engines_opening_a_new_database_at_once_migrate_it_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    errors, barrier = [], threading.Barrier(3)

    def open_it():
        try:
            barrier.wait()
            storage.make_engine(url).dispose()
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = storage.make_engine(url, migrate=False)
    try:
        assert storage.current_revision(engine) == "0006"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()
