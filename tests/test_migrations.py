"""Alembic migrations: empty database to head, previous revision to head with data kept, ORM match."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from cxr_core import storage
from cxr_core.storage_codec import encode_mask
from cxr_core.storage_schema import Base


def test_revisions_form_one_line_ending_at_0002():
    script = ScriptDirectory.from_config(storage.alembic_config())
    assert script.get_heads() == ["0002"]
    assert [r.revision for r in script.walk_revisions()] == ["0002", "0001"]


def test_empty_database_upgrades_to_head(tmp_path):
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'empty.db'}", migrate=False)
    try:
        assert storage.current_revision(engine) is None
        storage.init_db(engine)
        assert storage.current_revision(engine) == "0002"
        tables = set(inspect(engine).get_table_names())
        assert tables == {"alembic_version", "readers", "images", "annotation_sessions", "session_images",
                          "session_readers", "queue_items", "annotations", "drafts", "model_results"}
        storage.init_db(engine)  # already at head: nothing to do, nothing breaks
        assert storage.current_revision(engine) == "0002"
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


def test_previous_revision_upgrades_with_its_data_kept(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = storage.make_engine(url, migrate=False)
    storage.init_db(engine, "0001")
    assert storage.current_revision(engine) == "0001"
    assert "drafts" not in inspect(engine).get_table_names()
    pixels = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    # Write a reading with the 0001 tables only, as code of that revision would.
    mask = np.zeros((12, 10), bool)
    mask[2:6, 1:4] = True
    factory = storage.session_factory(engine)
    with factory.begin() as s:
        reader = storage.add_reader(s, "old-timer")
        sha = storage.add_image(s, pixels).sha256
        sid = storage.create_session(s, name="before", image_shas=[sha], reader_ids=[reader.id], seed=1).id
        rect = {"type": "Rect", "left": 1, "top": 2, "width": 3, "height": 4, "originX": "left", "originY": "top",
                "strokeWidth": 0, "label": "opacity"}
        ann = storage.Annotation(
            reader_id=reader.id, image_sha=sha, session_id=sid, version=1, diagnosis="Normal", confidence=2,
            regions=[{"index": 0, "type": "rect", "label": "opacity", "area_px": 12}], canvas_json={"objects": [rect]},
            canvas_width=10, canvas_height=12, mask_png=encode_mask(mask), mask_area=12, app_version="0.0.9",
            canvas_version="drawable-canvas 0.13.0; fabric 7.4.0")
        s.add(ann)
        s.flush()
        ann_id = ann.id
    engine.dispose()

    engine = storage.make_engine(url)  # upgrades on open
    try:
        assert storage.current_revision(engine) == "0002"
        factory = storage.session_factory(engine)
        with factory() as s:
            ann = s.get(storage.Annotation, ann_id)
            assert (ann.diagnosis, ann.mask_area, ann.regions[0]["label"]) == ("Normal", 12, "opacity")
            assert np.array_equal(storage.annotation_mask(ann), mask)
            assert np.abs(storage.image_pixels(storage.get_image(s, sha)) - pixels).max() < 1e-4
            assert storage.reader_queue(s, sid, reader.id).progress_text == "1 of 1 done"
        with factory.begin() as s:  # the new tables work alongside the old rows
            storage.save_draft(s, reader_id=reader.id, image_sha=sha, session_id=sid, canvas_json={"objects": []},
                               canvas_width=10, canvas_height=12)
            assert storage.revise_annotation(s, ann_id, confidence=4).mask_area == 12  # re-rasterised
        with pytest.raises(DBAPIError, match="immutable"):  # 0001's trigger survived the upgrade
            with engine.begin() as conn:
                conn.execute(text("UPDATE annotations SET confidence = 1"))
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
        assert storage.current_revision(engine) == "0002"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()
