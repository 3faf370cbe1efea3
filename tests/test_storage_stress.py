"""Storage under stress, on real SQLite files: long reads, queued and timed-out writers, read-only,
full and damaged databases.

Acknowledged means the ``with factory.begin()`` block returned. Every test checks that what was
acknowledged before a failure is there, unchanged, afterwards, and that the failed action left
nothing behind.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from sqlalchemy import event, func, select
from test_storage import seed_db, square, submit

from cxr_core import storage
from cxr_core.errors import CXRError
from cxr_core.storage import (
    Annotation,
    Draft,
    Reader,
    StorageBusyError,
    StorageFullError,
    StorageReadOnlyError,
    StorageUnavailableError,
    WriteInReadTransactionError,
)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A migrated empty database file, copied per test."""
    path = tmp_path_factory.mktemp("stress") / "template.db"
    storage.make_engine(f"sqlite:///{path}").dispose()
    return path


@pytest.fixture
def db_path(tmp_path, template):
    path = tmp_path / "annotations.db"
    shutil.copy(template, path)
    return path


@pytest.fixture
def open_factory(db_path):
    """``open_factory(busy_ms)``: a factory on its own engine (as another server process would have)."""
    engines = []

    def make(busy_ms=5_000, url=None):
        engines.append(storage.make_engine(url or f"sqlite:///{db_path}", busy_timeout_ms=busy_ms,
                                           migrate=url is None))
        return storage.session_factory(engines[-1])

    yield make
    for engine in engines:
        engine.dispose()


def snapshot(factory):
    """Every stored annotation as (id, reader, image, version, diagnosis, mask bytes): what must not change."""
    with storage.read_transaction(factory) as s:
        rows = s.scalars(select(Annotation).order_by(Annotation.id)).all()
        return [(a.id, a.reader_id, a.image_sha, a.version, a.diagnosis, storage.annotation_mask(a).tobytes())
                for a in rows]


def save_draft(factory, reader_id, sha, sid):
    with factory.begin() as s:
        storage.save_draft(s, reader_id=reader_id, image_sha=sha, session_id=sid,
                           canvas_json={"objects": [square(1, 1, 4)]}, canvas_width=50, canvas_height=40)


def drafts(factory):
    with storage.read_transaction(factory) as s:
        return s.scalar(select(func.count()).select_from(Draft))


# --- long reads and queued writers ---------------------------------------------------------------


def test_a_read_held_open_blocks_no_submit_and_keeps_its_snapshot(open_factory):
    factory = open_factory(busy_ms=1_000)
    (r0, _), shas, sid = seed_db(factory)
    opened, release, seen = threading.Event(), threading.Event(), {}

    def read():
        with storage.read_transaction(factory) as s:
            seen["before"] = storage.reader_queue(s, sid, r0).done
            opened.set()
            release.wait(30)  # the read stays open until the submit below has returned
            seen["during"] = storage.reader_queue(s, sid, r0).done

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert opened.wait(60)
        with factory.begin() as s:  # would wait 1 s and fail with StorageBusyError if the read held the lock
            saved = submit(s, r0, shas[0], sid).id
        assert reader.is_alive() and not release.is_set()  # the read was open the whole time
    finally:
        release.set()
        reader.join(60)
    assert seen == {"before": 0, "during": 0}  # one consistent snapshot for the whole read
    assert [row[0] for row in snapshot(factory)] == [saved]


def test_read_transaction_cannot_write_and_leaves_the_connection_writable(open_factory):
    factory = open_factory()
    seed_db(factory)
    with pytest.raises(WriteInReadTransactionError, match="read_transaction"):
        with storage.read_transaction(factory) as s:
            storage.add_reader(s, "stray")
    with factory.begin() as s:  # the pooled connection is back to read-write
        storage.add_reader(s, "kept")
    with storage.read_transaction(factory) as s:
        assert s.scalars(select(Reader.name).order_by(Reader.name)).all() == ["kept", "r0", "r1"]


def test_a_read_inside_a_write_transaction_still_queues_writers(open_factory):
    """Why pages must frame reads with read_transaction: factory.begin() takes the write lock at once."""
    holder, waiter = open_factory(busy_ms=5_000), open_factory(busy_ms=400)
    (r0, _), shas, sid = seed_db(holder)
    with holder.begin() as s:
        storage.reader_queue(s, sid, r0)
        start = time.monotonic()
        with pytest.raises(StorageBusyError) as caught:
            with waiter.begin() as w:
                submit(w, r0, shas[0], sid)
        waited = time.monotonic() - start
    assert isinstance(caught.value, CXRError) and 0.35 < waited < 5
    assert "busy" in str(caught.value) and "more than 0.4 s" in str(caught.value)
    assert snapshot(holder) == []


def test_a_second_writer_waits_for_the_first_and_both_land(open_factory):
    first, second = open_factory(), open_factory(busy_ms=10_000)
    (r0, r1), shas, sid = seed_db(first)
    locked = threading.Event()

    def slow_save():
        with first.begin() as s:
            submit(s, r0, shas[0], sid)
            locked.set()
            time.sleep(1.5)  # a slow save holding the write lock

    writer = threading.Thread(target=slow_save)
    writer.start()
    assert locked.wait(60)
    start = time.monotonic()
    with second.begin() as s:
        submit(s, r1, shas[0], sid)
    waited = time.monotonic() - start
    writer.join(60)
    assert 1.0 < waited < 10  # it queued behind the first save instead of failing
    assert sorted(row[1] for row in snapshot(first)) == [r0, r1]


HOLD_LOCK = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
con.execute("INSERT INTO readers (name, role, created_at) VALUES ('other process', 'sme', '2026-01-01')")
print("locked", flush=True)
sys.stdin.readline()
con.execute(sys.argv[2])
"""


def test_a_writer_past_the_bound_gets_the_busy_message_and_writes_nothing(open_factory, db_path):
    factory = open_factory(busy_ms=500)
    (r0, r1), shas, sid = seed_db(factory)
    with factory.begin() as s:
        kept = submit(s, r1, shas[1], sid).id
    save_draft(factory, r0, shas[0], sid)
    before = snapshot(factory)
    # Another process holds the write lock (a long save) and finally rolls back.
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db_path), "ROLLBACK"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(StorageBusyError, match=r"busy .*more than 0\.5 s.*nothing was saved yet") as caught:
            with factory.begin() as s:
                submit(s, r0, shas[0], sid)
        waited = time.monotonic() - start
    finally:
        other.communicate("\n", timeout=60)
    assert isinstance(caught.value, CXRError) and 0.45 < waited < 5
    assert snapshot(factory) == before and kept in [row[0] for row in before]  # nothing half-written
    assert drafts(factory) == 1  # the reader's draft (deleted by a submit) is still there
    with factory.begin() as s:  # pressing Submit again once the lock is free works
        submit(s, r0, shas[0], sid)
    assert len(snapshot(factory)) == 2 and drafts(factory) == 0


def test_a_connection_refused_the_lock_still_runs_its_next_statements_in_a_transaction(open_factory, db_path):
    factory = open_factory(busy_ms=300)
    engine = factory.kw["bind"]
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db_path), "COMMIT"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with engine.connect() as conn:
        try:
            assert other.stdout.readline().strip() == "locked"
            with pytest.raises(StorageBusyError):
                conn.execute(select(func.count()).select_from(Reader))
        finally:
            other.communicate("\n", timeout=60)
        conn.execute(Reader.__table__.insert().values(name="undone", role="sme"))
        assert conn.in_transaction()
        conn.rollback()  # so the insert is undone, as a transaction's would be
    with storage.read_transaction(factory) as s:
        assert s.scalars(select(Reader.name)).all() == ["other process"]


# --- read-only, full and damaged databases -------------------------------------------------------


def acknowledge(factory, n_images=3):
    """Seed and submit one reading per image for r0; returns (ids, r0, shas, session id)."""
    (r0, r1), shas, sid = seed_db(factory, images=n_images, shape=(64, 64))
    for i, sha in enumerate(shas):
        with factory.begin() as s:
            submit(s, r0, sha, sid, objects=[square(2 * i, 3, 5 + i)])
    return r1, shas, sid


def test_read_only_database_refuses_the_submit_clearly_and_still_shows_everything(open_factory, db_path):
    factory = open_factory()
    r1, shas, sid = acknowledge(factory)
    save_draft(factory, r1, shas[0], sid)
    before = snapshot(factory)
    # The same file as a read-only disk presents it (tests run as root, so chmod would not stop writes).
    ro = open_factory(url=f"sqlite:///file:{db_path}?mode=ro&uri=true")
    with pytest.raises(StorageReadOnlyError, match=r"read-only.*nothing was saved; readings saved before are intact"):
        with ro.begin() as s:
            submit(s, r1, shas[0], sid)
    with pytest.raises(StorageReadOnlyError):
        save_draft(ro, r1, shas[1], sid)
    assert snapshot(ro) == before and len(before) == 3  # pages framed with read_transaction still show everything
    with storage.read_transaction(ro) as s:
        assert [e.image_sha for e in storage.reader_queue(s, sid, r1).entries if e.has_draft] == [shas[0]]
    assert snapshot(factory) == before and drafts(factory) == 1


def test_full_disk_refuses_the_submit_clearly_and_loses_no_acknowledged_annotation(open_factory, db_path):
    factory = open_factory()
    r1, shas, sid = acknowledge(factory)
    full = open_factory(url=f"sqlite:///{db_path}")

    @event.listens_for(full.kw["bind"], "connect")
    def _no_room(dbapi_connection, record):  # the file may not grow: SQLite answers SQLITE_FULL
        pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    rng = np.random.default_rng(5)
    acked, refused = [], None
    for _ in range(60):  # free pages inside the file absorb a few saves; then it is full
        try:
            with full.begin() as s:
                sha = storage.add_image(s, rng.random((64, 64), dtype=np.float32)).sha256
            acked.append(sha)
        except StorageFullError as err:
            refused = err
            break
    assert refused is not None, "the database never filled up"
    assert "disk holding the annotation database is full" in str(refused) and isinstance(refused, CXRError)
    before = snapshot(factory)
    with pytest.raises(StorageFullError, match="nothing was saved"):
        with full.begin() as s:
            submit(s, r1, shas[0], sid, comment="x" * 50_000)
    with storage.read_transaction(full) as s:
        assert set(acked) <= set(s.scalars(select(storage.Image.sha256)))  # every acknowledged film is there
    assert snapshot(full) == before == snapshot(factory) and len(before) == 3
    with factory.begin() as s:  # once there is room again, the same submit goes through
        submit(s, r1, shas[0], sid, comment="x" * 50_000)
    assert len(snapshot(factory)) == 4


def test_damaged_or_missing_database_gives_a_plain_message(tmp_path):
    junk = tmp_path / "annotations.db"
    junk.write_bytes(b"not a database, " * 512)
    with pytest.raises(StorageUnavailableError, match="damaged or is not a database; nothing was saved"):
        storage.make_engine(f"sqlite:///{junk}")
    assert junk.read_bytes() == b"not a database, " * 512  # left as it was
    folder = tmp_path / "a folder"
    folder.mkdir()
    with pytest.raises(StorageUnavailableError, match="cannot be opened") as caught:
        storage.make_engine(f"sqlite:///{folder}")
    assert str(tmp_path) not in str(caught.value)  # no server path on the page


def _write_until_the_disk_refuses(db_url, wal_path, first_id, pipe):
    """Child process: a file-size limit just past the WAL's end, then revisions until one is refused."""
    factory = storage.session_factory(storage.make_engine(db_url, migrate=False))
    with storage.read_transaction(factory) as s:  # opens the WAL index (shared memory) before the limit
        s.get(Annotation, first_id)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails instead of killing
    size = os.path.getsize(wal_path) if os.path.exists(wal_path) else 0
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    latest = first_id
    for i in range(500):
        try:
            with factory.begin() as s:
                latest = storage.revise_annotation(s, latest, comment=f"revision {i}").id
            pipe.send(("acknowledged", latest))
        except CXRError as err:
            pipe.send(("refused", type(err).__name__, str(err)))
            break
    pipe.close()


def test_a_disk_failing_mid_write_loses_no_acknowledged_annotation(open_factory, db_path):
    """A real failed write: the child process may not grow any file past a limit (RLIMIT_FSIZE, EFBIG)."""
    factory = open_factory()
    (r0, _), shas, sid = seed_db(factory, images=1)
    with factory.begin() as s:
        first = submit(s, r0, shas[0], sid).id
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_write_until_the_disk_refuses,
                        args=(f"sqlite:///{db_path}", f"{db_path}-wal", first, theirs), daemon=True)
    child.start()
    theirs.close()
    messages = []
    while mine.poll(60):
        try:
            messages.append(mine.recv())
        except EOFError:
            break
    child.join(60)
    assert child.exitcode == 0 and len(messages) >= 2 and messages[-1][0] == "refused", messages[-3:]
    _, kind, text = messages[-1]
    assert kind in ("StorageFullError", "StorageUnavailableError") and "nothing was saved" in text
    acked = [first] + [m[1] for m in messages[:-1]]
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with storage.read_transaction(factory) as s:
        history = storage.annotation_history(s, reader_id=r0, image_sha=shas[0], session_id=sid)
        assert [a.id for a in history] == acked  # every acknowledged version, and nothing of the refused one
        assert history[-1].comment == (f"revision {len(acked) - 2}" if len(acked) > 1 else None)
        assert all(storage.annotation_mask(a).sum() == 100 for a in history)
    with factory.begin() as s:  # with room again, saving goes on
        storage.revise_annotation(s, acked[-1], comment="after")
