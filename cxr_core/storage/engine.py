"""The database engine and its transactions: SQLite hardening, Alembic upgrades, read and write framing.

``make_engine(url)`` creates the SQLite file and its folder on first use and upgrades the schema
to the newest Alembic revision. SQLite runs in WAL mode with ``synchronous=FULL`` and foreign keys
on; writes start with ``BEGIN IMMEDIATE`` and reads (:func:`read_transaction`) with a plain deferred
``BEGIN`` that never takes the write lock. Everything here is re-exported by :mod:`cxr_core.storage`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from cxr_core.storage.errors import StorageBusyError, translate

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x43585201  # pg_advisory_xact_lock key: one upgrade at a time
_READ_ONLY = "cxr_read_only"  # execution option marking read_transaction() connections



# --- engine and schema -----------------------------------------------------------------------


def make_engine(url: str | None = None, *, migrate: bool = True, busy_timeout_ms: int = 10_000) -> Engine:
    """An engine for ``url`` (default: ``CXR_DATABASE_URL`` or ``<data_dir>/annotations.db``).

    Parameters
    ----------
    url : str or None
        SQLAlchemy URL, e.g. ``sqlite:////abs/path.db`` or
        ``postgresql+psycopg://user:pw@host/db``.
    migrate : bool
        Upgrade the schema to the newest revision now (see :func:`init_db`).
    busy_timeout_ms : int
        SQLite only: how long a write waits for another writer's lock before
        :class:`StorageBusyError` (SQLite's busy handler retries with backoff meanwhile).

    Returns
    -------
    Engine
        Create one per URL and process and cache it; it holds a connection pool.
    """
    if url is None:
        from cxr_core.config import get_settings

        url = get_settings().database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        memory = database in ("", ":memory:") or database.startswith("file:")
        if not memory:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if memory:  # one shared connection, or each would see its own empty database
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        engine = create_engine(parsed, **kwargs)
        _configure_sqlite(engine, busy_timeout_ms)
    else:
        engine = create_engine(parsed, pool_pre_ping=True)
    if migrate:
        init_db(engine)
    return engine


def _set_wal(cursor: Any, timeout_s: float) -> None:
    """Switch to WAL, retrying while another connection creates the same new file.

    Changing the journal mode needs an exclusive lock and SQLite does not call the busy handler
    for it, so several engines opening one new database at once would otherwise fail.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    wait_s = busy_timeout_ms / 1000

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _set_wal(cursor, wait_s)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        # Deleted and overwritten content is zeroed, so a pseudonymised file name (migration 0006) leaves no
        # trace in free pages of the database file.
        cursor.execute("PRAGMA secure_delete = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:  # note the kind for _do_begin, which has no execution options
        connection.connection.info[_READ_ONLY] = bool(connection.get_execution_options().get(_READ_ONLY))

    def _do_begin(pooled: Any) -> None:
        # Here, not in the event: SQLAlchemy routes a failed BEGIN through handle_error and leaves the
        # Connection usable. query_only is set on every BEGIN since pooled connections are shared.
        raw = pooled.dbapi_connection
        if pooled.info.get(_READ_ONLY):
            # Deferred: a WAL snapshot, no write lock; query_only makes a stray write fail loudly.
            raw.execute("PRAGMA query_only = 1")
            raw.execute("BEGIN")
        else:
            raw.execute("PRAGMA query_only = 0")
            _begin_immediate(raw, wait_s)

    engine.dialect.do_begin = _do_begin  # type: ignore[method-assign]  # this engine's dialect instance only

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        conn = context.connection
        reading = None if conn is None else bool(conn.get_execution_options().get(_READ_ONLY))
        plain = translate(context.original_exception, wait_s=wait_s, reading=reading)
        if plain is not None:
            raise plain from context.original_exception


def _begin_immediate(raw: Any, wait_s: float) -> None:
    """``BEGIN IMMEDIATE``, retried with backoff until ``wait_s`` has passed (then the busy error is raised).

    IMMEDIATE takes the write lock up front, so a read-then-write transaction cannot hit
    SQLITE_BUSY halfway (a deferred one upgrading its read lock fails at once, without waiting),
    and DDL in migrations is transactional. SQLite's busy handler waits up to ``busy_timeout``
    within each attempt; the loop covers the busy results it returns without waiting.
    """
    deadline = time.monotonic() + wait_s
    pause = 0.01
    while True:
        try:
            raw.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            busy = isinstance(translate(exc, wait_s=wait_s, reading=False), StorageBusyError)
            if not busy or time.monotonic() >= deadline:
                raise  # the engine's handle_error hook turns it into the plain message
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.25)


def alembic_config() -> Any:
    """An Alembic ``Config`` for ``cxr_core/storage/migrations`` without an ini file."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def init_db(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: newest) in one transaction.

    Safe to call from several processes at once: SQLite serialises on its write lock,
    PostgreSQL on an advisory lock. A database already at ``revision`` is left as it is.
    """
    from alembic import command

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (``None`` when empty)."""
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """``sessionmaker`` whose objects stay readable after commit (``expire_on_commit=False``).

    ``factory.begin()`` frames a write; :func:`read_transaction` frames a read.
    """
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def read_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A Session for one read-only transaction: ``with read_transaction(factory) as s: ...``.

    On SQLite it starts with a deferred ``BEGIN`` and reads one consistent snapshot without the
    write lock, so however long it stays open it blocks no save; a write inside it raises
    :class:`~cxr_core.storage.errors.WriteInReadTransactionError` (a programming error: use
    ``factory.begin()``). On PostgreSQL it is an ordinary transaction. Objects stay readable
    after the block (the factory's ``expire_on_commit=False``) but lazy loads need the Session.
    """
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError(f"read_transaction needs a sessionmaker bound to an Engine, got bind={bind!r}")
    with factory(bind=bind.execution_options(**{_READ_ONLY: True})) as s, s.begin():
        yield s


__all__ = ["MIGRATIONS_DIR", "alembic_config", "current_revision", "init_db", "make_engine", "read_transaction",
           "session_factory"]
