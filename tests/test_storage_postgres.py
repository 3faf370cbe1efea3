"""The core storage tests of ``tests/test_storage.py`` again, on a real PostgreSQL server, plus
its own: upgrade from 0002 with rows kept, downgrade and back, a real ``record_shown`` race.

The server URL comes from ``CXR_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres:postgres@127.0.0.1:5432/cxr_test``). Each test gets its own
schema (``search_path``), dropped afterwards. Without a reachable server every test here is
skipped, with the reason shown by ``pytest -rs``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from cxr_core import storage
from cxr_core.storage.schema import Base

DEFAULT_URL = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/cxr_test"
BASE_URL = os.environ.get("CXR_TEST_POSTGRES_URL") or DEFAULT_URL

pytestmark = pytest.mark.postgres


def _load_tests(name):
    """A sibling test module, loaded by path (works with any pytest import mode)."""
    spec = importlib.util.spec_from_file_location(f"_pg_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_core = _load_tests("test_storage")
_migrations = _load_tests("test_migrations")
for _test in _core.CORE:  # collected here with this module's fixtures below
    globals()[_test.__name__] = _test


@pytest.fixture(scope="module")
def server():
    """An admin engine on the test server, or a skip saying why there is none."""
    url = make_url(BASE_URL)
    shown = url.render_as_string(hide_password=True)
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as err:  # any driver or network failure means: no server for these tests
        pytest.skip(f"PostgreSQL not reachable at {shown} ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                    "start one and set CXR_TEST_POSTGRES_URL")
    yield engine
    engine.dispose()


@pytest.fixture
def db_url(server):
    """A fresh schema for one test, as a URL whose connections use it (``search_path``)."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with server.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(BASE_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with server.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def engine(db_url):
    eng = storage.make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine):
    return storage.session_factory(engine)


def test_postgres_schema_matches_the_orm_models(engine):
    assert storage.current_revision(engine) == "0006"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_schema()")).scalar().startswith("t_")
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_postgres_upgrade_from_previous_revision_keeps_rows(db_url):
    engine = storage.make_engine(db_url, migrate=False)
    try:
        storage.init_db(engine, "0001")
        with engine.begin() as conn:  # Core: the ORM's Reader has the columns of 0005
            conn.execute(text("INSERT INTO readers (name, role, created_at) VALUES ('kept', 'admin', now())"))
        storage.init_db(engine)
        assert storage.current_revision(engine) == "0006"
        with storage.session_factory(engine)() as s:
            assert [(r.name, r.role) for r in storage.list_readers(s)] == [("kept", "admin")]
    finally:
        engine.dispose()


def test_postgres_upgrade_from_0002_keeps_annotations_drafts_and_masks(db_url):
    engine = storage.make_engine(db_url, migrate=False)
    try:
        storage.init_db(engine, "0002")
        sid, (r0, r1), sha, masks = _migrations._fill_at_0002(engine)
        with engine.begin() as conn:  # ids were given explicitly: move the sequence past them
            conn.execute(text("SELECT setval('annotations_id_seq', (SELECT max(id) FROM annotations))"))
        before = _migrations._dump(engine)
        storage.init_db(engine)
        assert storage.current_revision(engine) == "0006"
        after = _migrations._dump(engine)
        new_columns = {"annotations": ("exclusion", "shown_at"), "drafts": ("exclusion", "comment"),
                       "readers": ("password_hash", "disabled", "failed_logins", "locked_until")}
        defaults = {"disabled": False, "failed_logins": 0}  # new columns are NULL but for these
        for table, rows in before.items():
            added = new_columns.get(table, ())
            assert [{k: v for k, v in row.items() if k not in added} for row in after[table]] == rows, table
            assert all(row[c] == defaults.get(c) for row in after[table] for c in added), table
        factory = storage.session_factory(engine)
        with factory() as s:
            for ann in s.scalars(select(storage.Annotation)):
                assert np.array_equal(storage.annotation_mask(ann), masks[ann.id])
        with factory.begin() as s:
            when = storage.record_shown(s, reader_id=r0, image_sha=sha, session_id=sid)
            v3 = storage.revise_annotation(s, 2, exclusion="not readable")
            assert (v3.version, v3.diagnosis, v3.confidence, v3.shown_at) == (3, storage.EXCLUDED, 3, when)
        with pytest.raises(DBAPIError, match="immutable"):  # 0001's trigger is still there
            with engine.begin() as conn:
                conn.execute(text("UPDATE annotations SET confidence = 1"))
    finally:
        engine.dispose()


def test_postgres_record_shown_race_between_two_transactions(factory):
    """Two requests show the same film at once: the second waits on the first's insert, loses
    the unique key, and returns the first's time; the transaction it runs in goes on."""
    (r0, _), shas, sid = _core.seed_db(factory)
    first = datetime(2026, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    got, errors, inserted = [], [], threading.Event()
    key = dict(reader_id=r0, image_sha=shas[0], session_id=sid)
    winner = factory()
    winner.begin()
    assert storage.record_shown(winner, **key, now=first) == first  # inserted, not yet committed

    def loser():
        try:
            with factory.begin() as s:
                inserted.set()
                got.append(storage.record_shown(s, **key, now=first + timedelta(seconds=3)))
                got.append(_core.submit(s, r0, shas[0], sid).shown_at)
        except Exception as err:  # reported below
            errors.append(err)

    thread = threading.Thread(target=loser)
    thread.start()
    assert inserted.wait(30)
    thread.join(1.0)
    assert thread.is_alive()  # blocked on the winner's uncommitted row
    winner.commit()
    winner.close()
    thread.join(60)
    assert errors == [] and got == [first, first]
    with factory() as s:
        assert s.scalars(select(storage.ReadingStart.shown_at)).all() == [first]


def test_postgres_downgrade_to_0002_and_back(engine):
    from alembic import command

    with engine.begin() as conn:
        cfg = storage.alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    assert storage.current_revision(engine) == "0002"
    with engine.connect() as conn:
        nullable = conn.execute(text("SELECT is_nullable FROM information_schema.columns WHERE table_schema = "
                                     "current_schema() AND table_name = 'annotations' AND column_name = 'confidence'"))
        assert nullable.scalar() == "NO"
    storage.init_db(engine)
    assert storage.current_revision(engine) == "0006"
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_postgres_0005_users_trail_and_downgrade(engine):
    """Migration 0005 on PostgreSQL: the role check admits researcher, the trail refuses UPDATE and
    DELETE by trigger, a downgrade to 0004 keeps the readers and is refused while a researcher exists."""
    from alembic import command

    from cxr_core import auth

    factory = storage.session_factory(engine)
    with factory.begin() as s:
        auth.create_user(s, "boss", "admin", "a long admin password")
        auth.create_user(s, "rita", "researcher", "a long researcher password")
        auth.record(s, "boss", "export", film_sha="a" * 64, detail="x")
    with factory() as s:
        assert auth.authenticate(s, "rita", "a long researcher password").role == "researcher"
    for statement in ("UPDATE audit_events SET who = 'x'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="audit events are immutable"):
            with engine.begin() as conn:
                conn.execute(text(statement))
    with pytest.raises(DBAPIError, match="ck_readers_role"):
        with engine.begin() as conn:
            conn.execute(text("UPDATE readers SET role = 'boss'"))

    def downgrade():
        with engine.begin() as conn:
            cfg = storage.alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0004")

    with pytest.raises(RuntimeError, match="researcher, which revision 0004 cannot store"):
        downgrade()
    with factory.begin() as s:
        auth.set_role(s, "rita", "sme")
    downgrade()
    assert storage.current_revision(engine) == "0004"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, role FROM readers ORDER BY name")).all() == [
            ("boss", "admin"), ("rita", "sme")]
        assert conn.execute(text("SELECT to_regclass('audit_events')")).scalar() is None
    storage.init_db(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
