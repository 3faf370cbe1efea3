"""The core storage tests of ``tests/test_storage.py`` again, on a real PostgreSQL server.

The server URL comes from ``CXR_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres:postgres@127.0.0.1:5432/cxr_test``). Each test gets its own
schema (``search_path``), dropped afterwards. Without a reachable server every test here is
skipped, with the reason shown by ``pytest -rs``.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cxr_core import storage
from cxr_core.storage_schema import Base

DEFAULT_URL = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/cxr_test"
BASE_URL = os.environ.get("CXR_TEST_POSTGRES_URL") or DEFAULT_URL

pytestmark = pytest.mark.postgres


def _load_core_tests():
    """tests/test_storage.py, loaded by path (works with any pytest import mode)."""
    spec = importlib.util.spec_from_file_location("_storage_core_tests", Path(__file__).with_name("test_storage.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_core = _load_core_tests()
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
    assert storage.current_revision(engine) == "0003"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_schema()")).scalar().startswith("t_")
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_postgres_upgrade_from_previous_revision_keeps_rows(db_url):
    engine = storage.make_engine(db_url, migrate=False)
    try:
        storage.init_db(engine, "0001")
        with storage.session_factory(engine).begin() as s:
            storage.add_reader(s, "kept", "admin")
        storage.init_db(engine)
        assert storage.current_revision(engine) == "0003"
        with storage.session_factory(engine)() as s:
            assert [(r.name, r.role) for r in storage.list_readers(s)] == [("kept", "admin")]
    finally:
        engine.dispose()
