"""Storage on real SQLite files: round trips, immutability, drafts, concurrency, crash safety.

Tests decorated ``@core`` run again on PostgreSQL in ``tests/test_storage_postgres.py`` (same
functions, that module's ``db_url`` fixture).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import event, func, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError

from cxr_core import storage
from cxr_core.annotation.masks import rasterize
from cxr_core.storage import (
    EXCLUDED,
    EXCLUSION_REASONS,
    AlreadySubmittedError,
    Annotation,
    ConcurrentEditError,
    Draft,
    ImmutableAnnotationError,
    NotAssignedError,
    ReadingStart,
    StaleVersionError,
    StorageError,
)
from cxr_core.storage.annotation_store import AnnotationError

CORE = []  # tests that tests/test_storage_postgres.py runs on PostgreSQL as well


def core(fn):
    CORE.append(fn)
    return fn


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory):
    """A migrated empty database file, copied per test (migrating each time costs ~0.2 s)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    storage.make_engine(f"sqlite:///{path}").dispose()  # last close checkpoints the WAL
    return path


@pytest.fixture
def db_url(tmp_path, sqlite_template):
    path = tmp_path / "annotations.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def engine(db_url):
    eng = storage.make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine):
    return storage.session_factory(engine)


def square(left, top, size, label="opacity"):
    return {"type": "Rect", "left": left, "top": top, "width": size, "height": size,
            "originX": "left", "originY": "top", "strokeWidth": 0, "label": label}


def canvas(*objects):
    return {"version": "7.4.0", "objects": list(objects)}


def seed_db(factory, *, readers=2, images=3, blind=True, shape=(40, 50), name="study"):
    """Readers r0.., images with distinct pixels, one session assigning every image to every reader."""
    rng = np.random.default_rng(0)
    with factory.begin() as s:
        reader_ids = [storage.add_reader(s, f"r{i}", "sme").id for i in range(readers)]
        shas = [storage.add_image(s, rng.random(shape, dtype=np.float32), original_name=f"{i}.png").sha256
                for i in range(images)]
        session_id = storage.create_session(
            s, name=name, image_shas=shas, reader_ids=reader_ids, blind=blind, seed=7).id
    return reader_ids, shas, session_id


def submit(s, reader_id, sha, session_id, objects=None, **kw):
    args = dict(diagnosis="Pneumonia", confidence=3, canvas_json=canvas(*(objects or [square(5, 5, 10)])),
                canvas_width=50, canvas_height=40)
    args.update(kw)
    return storage.submit_annotation(s, reader_id=reader_id, image_sha=sha, session_id=session_id, **args)


# --- core: run on SQLite here and on PostgreSQL in test_storage_postgres.py --------------------


@core
def test_images_readers_sessions_round_trip(factory):
    rng = np.random.default_rng(1)
    pixels16 = rng.random((30, 20), dtype=np.float32)
    pixels8 = (rng.random((12, 9)) * 255).astype(np.uint8)
    with factory.begin() as s:
        admin = storage.add_reader(s, "Ada", "admin")
        readers = [storage.add_reader(s, n) for n in ("b", "c")]
        img16 = storage.add_image(s, pixels16, reference_label="Normal", original_name="x.dcm")
        img8 = storage.add_image(s, pixels8)
        again = storage.add_image(s, pixels16)
        assert again.sha256 == img16.sha256  # same pixels, same identity, stored once
        extra = [storage.add_image(s, rng.random((8, 8), dtype=np.float32)).sha256 for _ in range(6)]
        shas = [img16.sha256, img8.sha256, *extra]
        sess = storage.create_session(s, name="pilot", image_shas=shas, reader_ids=[r.id for r in readers],
                                      blind=True, created_by=admin.id, seed=123)
    with factory() as s:
        got16, got8 = storage.get_image(s, img16.sha256), storage.get_image(s, img8.sha256)
        assert (got16.height, got16.width, got16.bit_depth) == (30, 20, 16)
        assert (got16.reference_label, got16.original_name) == ("Normal", "x.dcm")
        assert np.abs(storage.image_pixels(got16) - pixels16).max() <= 0.5 / 65535 + 1e-7
        assert got8.bit_depth == 8 and np.array_equal(np.rint(storage.load_pixels(s, img8.sha256) * 255), pixels8)
        assert s.scalar(select(func.count()).select_from(storage.Image)) == 8
        assert [r.name for r in storage.list_readers(s)] == ["Ada", "b", "c"]
        assert [r.name for r in storage.list_readers(s, role="sme")] == ["b", "c"]
        loaded = storage.get_session(s, "pilot")
        assert (loaded.blind, loaded.seed, loaded.created_by) == (True, 123, admin.id)
        assert [r.name for r in storage.session_readers(s, loaded.id)] == ["b", "c"]
        assert [x.name for x in storage.list_sessions(s, reader_id=readers[0].id)] == ["pilot"]
        assert storage.list_sessions(s, reader_id=admin.id) == []
        orders = [[e.image_sha for e in storage.reader_queue(s, loaded.id, r.id).entries] for r in readers]
        assert sorted(orders[0]) == sorted(shas) == sorted(orders[1])
        assert orders[0] != orders[1] and orders[0] != shas  # each reader shuffled differently
        queue = storage.reader_queue(s, loaded.id, readers[0].id)
        assert (queue.done, queue.total, queue.progress_text, queue.next_pending.position) == (0, 8, "0 of 8 done", 0)
        assert loaded.created_at.tzinfo is not None


@core
def test_submit_stores_rasterised_mask_and_deletes_draft(factory):
    (r0, r1), shas, sid = seed_db(factory)
    objects = [square(5, 5, 10, "consolidation"), {"type": "Line", "x1": 0, "y1": 0, "x2": 3, "y2": 3},
               square(30, 20, 6, "nodule")]
    fit = {"natural_width": 50, "natural_height": 40, "scale_x": 2.0, "scale_y": 2.0, "offset_x": 0, "offset_y": 0}
    with factory.begin() as s:
        storage.save_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid, canvas_json=canvas(*objects),
                           canvas_width=100, canvas_height=80, labels=["x", None, "y"])
        drafts = {e.image_sha: e.has_draft for e in storage.reader_queue(s, sid, r0).entries}
        assert drafts == {shas[0]: True, shas[1]: False, shas[2]: False}
    with factory.begin() as s:
        a = submit(s, r0, shas[0], sid, objects, background_fit=fit, canvas_width=100, canvas_height=80,
                   diagnosis="tuberculosis", confidence=5, comment="apical")
        ann_id = a.id
    with factory() as s:
        a = s.get(Annotation, ann_id)
        assert (a.version, a.supersedes_id, a.diagnosis, a.confidence) == (1, None, "Tuberculosis", 5)
        assert a.comment == "apical"
        assert a.regions == [{"index": 0, "type": "rect", "label": "consolidation", "area_px": 25},
                             {"index": 2, "type": "rect", "label": "nodule", "area_px": 9}]
        mask = storage.annotation_mask(a)
        assert mask.shape == (40, 50) and a.mask_area == 34
        assert np.array_equal(mask, rasterize(objects, image_shape=(40, 50), background_fit=fit))
        assert a.canvas_json["objects"][2]["label"] == "nodule" and a.background_fit == fit
        assert (a.canvas_width, a.canvas_height) == (100, 80)
        assert a.app_version and "0.13" in a.canvas_version and "7.4.0" in a.canvas_version
        assert a.created_at.tzinfo is not None
        assert storage.get_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid) is None
        queue = storage.reader_queue(s, sid, r0)
        assert queue.progress_text == "1 of 3 done"
        assert storage.reader_queue(s, sid, r1).done == 0


@core
def test_revisions_add_versions_and_keep_the_old_ones(factory):
    (r0, r1), shas, sid = seed_db(factory)
    with factory.begin() as s:
        v1 = submit(s, r0, shas[0], sid)
    with factory.begin() as s:
        with pytest.raises(AlreadySubmittedError, match="revise_annotation"):
            submit(s, r0, shas[0], sid)
    with factory.begin() as s:
        v2 = storage.revise_annotation(s, v1.id, diagnosis="Normal")
        v3 = storage.revise_annotation(s, v2.id, canvas_json=canvas(square(0, 0, 4, "effusion")), confidence=1)
    with factory.begin() as s:
        with pytest.raises(StaleVersionError, match="version 3"):
            storage.revise_annotation(s, v1.id, diagnosis="COVID-19")
    with factory() as s:
        history = storage.annotation_history(s, reader_id=r0, image_sha=shas[0], session_id=sid)
        assert [(a.version, a.diagnosis, a.confidence, a.mask_area) for a in history] == [
            (1, "Pneumonia", 3, 100), (2, "Normal", 3, 100), (3, "Normal", 1, 16)]
        assert [a.supersedes_id for a in history] == [None, v1.id, v2.id]
        assert history[1].regions == history[0].regions  # kept labels
        assert storage.latest_annotation(s, reader_id=r0, image_sha=shas[0], session_id=sid).id == v3.id
        assert [a.id for a in storage.latest_annotations(s, session_id=sid)] == [v3.id]
        assert storage.reader_queue(s, sid, r0).entries[0].version in (None, 3)


@core
def test_submitted_annotations_cannot_be_changed_or_deleted(factory, engine):
    (r0, _), shas, sid = seed_db(factory)
    with factory.begin() as s:
        ann_id = submit(s, r0, shas[0], sid).id
    with pytest.raises(ImmutableAnnotationError, match="revise_annotation"):
        with factory.begin() as s:
            s.get(Annotation, ann_id).diagnosis = "Normal"
    with pytest.raises(ImmutableAnnotationError, match="cannot be deleted"):
        with factory.begin() as s:
            s.delete(s.get(Annotation, ann_id))
    # the database refuses too, whatever client writes to it
    for statement in ("UPDATE annotations SET diagnosis = 'Normal'", "DELETE FROM annotations"):
        with pytest.raises(DBAPIError, match="immutable"):
            with engine.begin() as conn:
                conn.execute(text(statement))
    with factory() as s:
        assert s.get(Annotation, ann_id).diagnosis == "Pneumonia"


@core
def test_drafts_are_upserted_and_survive_a_new_engine(factory, db_url):
    (r0, _), shas, sid = seed_db(factory)
    with factory.begin() as s:
        storage.save_draft(s, reader_id=r0, image_sha=shas[1], session_id=sid, canvas_json=canvas(square(1, 1, 2)),
                           canvas_width=50, canvas_height=40, labels=["a"])
    with factory.begin() as s:
        storage.save_draft(s, reader_id=r0, image_sha=shas[1], session_id=sid,
                           canvas_json=canvas(square(1, 1, 2), square(9, 9, 3)), canvas_width=50, canvas_height=40,
                           labels=["a", "b"], diagnosis="Normal", confidence=2)
    other = storage.make_engine(db_url)  # a browser refresh: a new process could do the same
    try:
        with storage.session_factory(other)() as s:
            drafts = list(s.scalars(select(Draft)))
            assert len(drafts) == 1
            d = drafts[0]
            assert (len(d.canvas_json["objects"]), d.labels, d.diagnosis, d.confidence) == (2, ["a", "b"], "Normal", 2)
    finally:
        other.dispose()
    with factory.begin() as s:
        assert storage.delete_draft(s, reader_id=r0, image_sha=shas[1], session_id=sid)
        assert not storage.delete_draft(s, reader_id=r0, image_sha=shas[1], session_id=sid)


@core
def test_a_failed_save_writes_nothing(factory):
    (r0, _), shas, sid = seed_db(factory)
    with factory.begin() as s:
        storage.save_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid, canvas_json=canvas(),
                           canvas_width=50, canvas_height=40)
    unlabelled = dict(square(1, 1, 5), label="")
    with pytest.raises(AnnotationError, match=r"object\(s\) \[1\] have no finding label"):
        with factory.begin() as s:
            submit(s, r0, shas[0], sid, [square(9, 9, 3), unlabelled])
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Annotation)) == 0
        assert storage.get_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid) is not None


@core
def test_only_assigned_images_can_be_annotated(factory, engine):
    (r0, r1), shas, sid = seed_db(factory)
    with factory.begin() as s:
        outsider = storage.add_reader(s, "outsider").id
        stray = storage.add_image(s, np.full((40, 50), 0.5, np.float32)).sha256
    for reader, sha in ((outsider, shas[0]), (r0, stray)):
        with pytest.raises(NotAssignedError, match="not in reader"):
            with factory.begin() as s:
                submit(s, reader, sha, sid)
    # and the database's foreign key to the queue refuses a direct insert
    with pytest.raises(DBAPIError):
        with factory.begin() as s:
            s.add(Annotation(reader_id=outsider, image_sha=shas[0], session_id=sid, version=1, diagnosis="Normal",
                             confidence=1, regions=[], canvas_json={}, canvas_width=1, canvas_height=1,
                             mask_png=b"", mask_area=0, app_version="x", canvas_version="x"))


@core
def test_model_results_round_trip(factory):
    _, shas, _ = seed_db(factory)
    heat = np.linspace(0, 1, 40 * 50, dtype=np.float32).reshape(40, 50)
    key = dict(image_sha=shas[0], model_name="resnet50", model_checksum="ab" * 32, method="gradcam", target="Pneumonia")
    with factory.begin() as s:
        first = storage.save_model_result(s, probabilities={"Normal": 0.1, "Pneumonia": 0.9}, heatmap=heat, **key)
        again = storage.save_model_result(s, probabilities={"Normal": 0.5, "Pneumonia": 0.5}, **key)
        assert again.id == first.id
        storage.save_model_result(s, probabilities={"Normal": 1.0}, **{**key, "method": "random"})
    with factory() as s:
        got = storage.get_model_result(s, **key)
        assert got.probabilities == {"Normal": 0.1, "Pneumonia": 0.9}
        back = storage.result_heatmap(got)
        assert back.dtype == np.float32 and back.shape == (40, 50) and np.abs(back - heat).max() < 1e-3
        assert [r.method for r in storage.model_results_for_image(s, shas[0])] == ["gradcam", "random"]
        assert storage.result_heatmap(storage.model_results_for_image(s, shas[0])[1]) is None


@core
def test_concurrent_submits_from_threads_all_land(factory):
    reader_ids, shas, sid = seed_db(factory, readers=4, images=3)
    errors, barrier = [], threading.Barrier(len(reader_ids))

    def work(reader_id):
        try:
            barrier.wait()
            for sha in shas:
                with factory.begin() as s:
                    a = submit(s, reader_id, sha, sid)
                with factory.begin() as s:
                    storage.revise_annotation(s, a.id, confidence=5)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(r,)) for r in reader_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with factory() as s:
        latest = storage.latest_annotations(s, session_id=sid)
        assert len(latest) == 12 and {a.version for a in latest} == {2}
        assert s.scalar(select(func.count()).select_from(Annotation)) == 24


@core
def test_concurrent_revisions_of_one_version_keep_exactly_one(factory):
    (r0, _), shas, sid = seed_db(factory)
    with factory.begin() as s:
        v1 = submit(s, r0, shas[0], sid).id
    outcomes, barrier = [], threading.Barrier(3)

    def work(conf):
        barrier.wait()
        try:
            with factory.begin() as s:
                storage.revise_annotation(s, v1, confidence=conf)
            outcomes.append("ok")
        except (StaleVersionError, ConcurrentEditError) as err:
            outcomes.append(type(err).__name__)

    threads = [threading.Thread(target=work, args=(c,)) for c in (1, 2, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes).count("ok") == 1 and len(outcomes) == 3
    with factory() as s:
        history = storage.annotation_history(s, reader_id=r0, image_sha=shas[0], session_id=sid)
        assert [a.version for a in history] == [1, 2]


def _writer(url, mode, reader_id, session_id, go, pipe):
    """Child process: its own engine; submits its queue, or revises one reading for ever.

    Sends each annotation id through ``pipe`` after its transaction has committed.
    """
    factory = storage.session_factory(storage.make_engine(url))
    with factory() as s:
        shas = [e.image_sha for e in storage.reader_queue(s, session_id, reader_id).entries]
    pipe.send("ready")
    go.wait(60)
    if mode == "submit":
        for sha in shas:
            with factory.begin() as s:
                annotation_id = submit(s, reader_id, sha, session_id, [square(2, 2, 9)]).id
            pipe.send(annotation_id)
        return
    with factory.begin() as s:
        annotation_id = submit(s, reader_id, shas[0], session_id, [square(2, 2, 9)]).id
    pipe.send(annotation_id)
    for n in range(10**6):
        with factory.begin() as s:
            annotation_id = storage.revise_annotation(s, annotation_id, confidence=n % 5 + 1).id
        pipe.send(annotation_id)


def spawn(db_url, mode, reader_ids, session_id):
    """Start one forked writer per reader, wait until all are connected, then release them together."""
    ctx = multiprocessing.get_context("fork")  # no re-import per child: the 2 CI cores stay free
    go = ctx.Event()
    procs = []
    for reader_id in reader_ids:
        mine, theirs = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_writer, args=(db_url, mode, reader_id, session_id, go, theirs), daemon=True)
        proc.start()
        theirs.close()
        procs.append((proc, mine))
    for proc, pipe in procs:
        assert pipe.poll(60) and pipe.recv() == "ready"
    go.set()
    return procs


def acks(pipe, limit):
    """Annotation ids a writer acknowledged, up to ``limit`` (fewer if it stopped)."""
    out = []
    while len(out) < limit and pipe.poll(60):
        try:
            out.append(pipe.recv())
        except EOFError:
            break
    return out


@core
def test_concurrent_submits_from_processes_all_land(factory, db_url):
    reader_ids, shas, sid = seed_db(factory, readers=3, images=3)
    procs = spawn(db_url, "submit", reader_ids, sid)
    acked = []
    for proc, pipe in procs:
        acked += acks(pipe, 3)
        proc.join(60)
        assert proc.exitcode == 0
    assert len(acked) == 9
    with factory() as s:
        assert set(s.scalars(select(Annotation.id))) == set(acked)
        assert all(storage.reader_queue(s, sid, r).done == 3 for r in reader_ids)


@core
def test_killed_writer_leaves_database_intact_and_acknowledged_saves_present(factory, db_url, engine):
    (r0, _), shas, sid = seed_db(factory, readers=2, images=1, shape=(256, 256))
    [(proc, pipe)] = spawn(db_url, "revise", [r0], sid)
    acked = acks(pipe, 15)
    os.kill(proc.pid, signal.SIGKILL)  # somewhere inside the next save
    proc.join(30)
    assert len(acked) == 15 and proc.exitcode == -signal.SIGKILL
    if engine.dialect.name == "sqlite":
        with sqlite3.connect(engine.url.database) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    with factory() as s:
        history = storage.annotation_history(s, reader_id=r0, image_sha=shas[0], session_id=sid)
        assert set(acked) <= {a.id for a in history}
        assert [a.version for a in history] == list(range(1, len(history) + 1))  # no gaps, no partial rows
        assert all(storage.annotation_mask(a).sum() == 81 for a in history)
        latest_id = history[-1].id
    with factory.begin() as s:  # and it still takes writes
        assert storage.revise_annotation(s, latest_id, confidence=2).version == len(history) + 1


# --- core: exclusions ---------------------------------------------------------------------------


def _queue_flags(s, sid, reader_id):
    return {e.image_sha: (e.version, e.has_draft, e.excluded) for e in storage.reader_queue(s, sid, reader_id).entries}


@core
def test_exclusion_is_an_answer_that_drafts_submits_and_revises(factory):
    (r0, r1), shas, sid = seed_db(factory)
    assert (EXCLUDED, EXCLUSION_REASONS) == ("excluded", ("not a chest film", "not readable"))
    with factory.begin() as s:
        storage.save_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid, canvas_json=canvas(),
                           canvas_width=50, canvas_height=40, exclusion="not readable", confidence=2)
    with factory() as s:
        d = storage.get_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid)
        assert (d.diagnosis, d.confidence, d.exclusion) == (EXCLUDED, 2, "not readable")
        assert _queue_flags(s, sid, r0)[shas[0]] == (None, True, False)  # a draft is no answer yet
    with factory.begin() as s:  # no diagnosis, no confidence, no marks: reason canonicalised
        a = submit(s, r0, shas[0], sid, canvas_json=canvas(), diagnosis=None, confidence=None,
                   exclusion=" Not a chest film")
        b = submit(s, r1, shas[0], sid, confidence=2, exclusion="not readable")  # marks and confidence kept
    with factory() as s:
        a, b = s.get(Annotation, a.id), s.get(Annotation, b.id)
        assert (a.diagnosis, a.confidence, a.exclusion, a.mask_area, a.regions) == (
            EXCLUDED, None, "not a chest film", 0, [])
        assert (b.diagnosis, b.confidence, b.exclusion, b.mask_area) == (EXCLUDED, 2, "not readable", 100)
        assert storage.get_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid) is None
        assert _queue_flags(s, sid, r0) == {shas[0]: (1, False, True), shas[1]: (None, False, False),
                                            shas[2]: (None, False, False)}
        assert storage.reader_queue(s, sid, r0).progress_text == "1 of 3 done"  # an exclusion is done
    with factory.begin() as s:
        v2 = storage.revise_annotation(s, a.id, diagnosis="Normal", confidence=4)  # a diagnosis ends it
        v3 = storage.revise_annotation(s, v2.id, exclusion="not readable")  # confidence 4 kept
        v4 = storage.revise_annotation(s, v3.id, comment="film rotated")  # exclusion kept
        v5 = storage.revise_annotation(s, v4.id, exclusion=None, diagnosis="Pneumonia")
        v6 = storage.revise_annotation(s, v5.id, exclusion="not a chest film", diagnosis="Normal")  # reason wins
    with factory() as s:
        history = storage.annotation_history(s, reader_id=r0, image_sha=shas[0], session_id=sid)
        assert [(h.version, h.diagnosis, h.confidence, h.exclusion) for h in history] == [
            (1, EXCLUDED, None, "not a chest film"), (2, "Normal", 4, None), (3, EXCLUDED, 4, "not readable"),
            (4, EXCLUDED, 4, "not readable"), (5, "Pneumonia", 4, None), (6, EXCLUDED, 4, "not a chest film")]
        assert [h.id for h in history[1:]] == [v2.id, v3.id, v4.id, v5.id, v6.id]
        assert _queue_flags(s, sid, r0)[shas[0]] == (6, False, True)
        assert _queue_flags(s, sid, r1)[shas[0]] == (1, False, True)


@core
def test_exclusion_refusals_name_what_is_accepted_and_write_nothing(factory, engine):
    (r0, _), shas, sid = seed_db(factory)
    with factory.begin() as s:
        excluded_id = submit(s, r0, shas[1], sid, canvas_json=canvas(), confidence=None, exclusion="not readable").id
        storage.save_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid, canvas_json=canvas(),
                           canvas_width=50, canvas_height=40, diagnosis="Normal")
    reasons = "expected one of 'not a chest film', 'not readable'"
    draft = dict(reader_id=r0, image_sha=shas[0], session_id=sid, canvas_json=canvas(), canvas_width=50,
                 canvas_height=40)
    cases = [
        (lambda s: submit(s, r0, shas[0], sid, diagnosis="Excluded"), "'Excluded' needs an exclusion reason"),
        (lambda s: submit(s, r0, shas[0], sid, exclusion="blurry"), f"exclusion reason 'blurry'; {reasons}"),
        (lambda s: submit(s, r0, shas[0], sid, exclusion=3), f"exclusion reason 3; {reasons}"),
        (lambda s: submit(s, r0, shas[0], sid, confidence=None), "confidence None; expected an integer 1"),
        (lambda s: submit(s, r0, shas[0], sid, exclusion="not readable", confidence=9), "confidence 9"),
        (lambda s: storage.save_draft(s, **draft, exclusion="blurry"), f"exclusion reason 'blurry'; {reasons}"),
        (lambda s: storage.save_draft(s, **draft, diagnosis="excluded"), "needs an exclusion reason"),
        (lambda s: storage.revise_annotation(s, excluded_id, exclusion="?"), f"exclusion reason '\\?'; {reasons}"),
        (lambda s: storage.revise_annotation(s, excluded_id, exclusion=None), "is an exclusion .* give a diagnosis"),
        (lambda s: storage.revise_annotation(s, excluded_id, diagnosis="Normal"), "confidence None; expected"),
    ]
    for call, message in cases:
        with pytest.raises(AnnotationError, match=message):
            with factory.begin() as s:
                call(s)
    # the database refuses an inconsistent answer whatever client writes it
    row = dict(reader_id=r0, image_sha=shas[2], session_id=sid, version=1, regions=[], canvas_json={},
               canvas_width=1, canvas_height=1, mask_png=b"", mask_area=0, app_version="x", canvas_version="x")
    bad = [dict(diagnosis=EXCLUDED, confidence=3, exclusion=None), dict(diagnosis="Normal", confidence=None),
           dict(diagnosis=EXCLUDED, exclusion="blurry"),
           dict(diagnosis="Normal", confidence=3, exclusion="not readable")]
    for answer in bad:
        with pytest.raises(DBAPIError):
            with engine.begin() as conn:
                conn.execute(insert(Annotation.__table__).values(**row, **answer))
    with factory() as s:
        assert [a.id for a in s.scalars(select(Annotation))] == [excluded_id]
        d = storage.get_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid)
        assert (d.diagnosis, d.exclusion) == ("Normal", None)


# --- core: when a film was first shown ----------------------------------------------------------


@core
def test_record_shown_once_per_version_and_copied_to_the_annotation(factory):
    (r0, r1), shas, sid = seed_db(factory)
    t0 = datetime.now(timezone.utc).replace(microsecond=123456) - timedelta(hours=2)
    t1 = t0 + timedelta(minutes=30)
    key = dict(reader_id=r0, image_sha=shas[0], session_id=sid)
    with factory.begin() as s:
        assert storage.record_shown(s, **key, now=t0) == t0
    with factory.begin() as s:  # a rerun, a reload, a second tab: the first time stays
        assert storage.record_shown(s, **key, now=t0 + timedelta(seconds=90)) == t0
        assert storage.record_shown(s, **key) == t0
        naive = storage.record_shown(s, reader_id=r0, image_sha=shas[1], session_id=sid, now=t1.replace(tzinfo=None))
        assert naive == t1 and naive.tzinfo is not None  # naive means UTC
    with factory.begin() as s:
        v1 = submit(s, r0, shas[0], sid)
        untimed = submit(s, r0, shas[2], sid)
    with factory.begin() as s:  # starting a revision of version 1: version 2's own start
        assert storage.record_shown(s, **key, now=t1) == t1
        assert storage.record_shown(s, **key, now=t1 + timedelta(minutes=5)) == t1
        v2 = storage.revise_annotation(s, v1.id, confidence=5)
        v3 = storage.revise_annotation(s, v2.id, confidence=4)  # no start recorded for version 3
    with factory() as s:
        v1, v2, v3, untimed = (s.get(Annotation, a.id) for a in (v1, v2, v3, untimed))
        assert (v1.shown_at, v2.shown_at, v3.shown_at, untimed.shown_at) == (t0, t1, None, None)
        assert t0 < v1.created_at <= v2.created_at  # created_at stays the submit time
        rows = s.execute(select(ReadingStart.image_sha, ReadingStart.version, ReadingStart.shown_at)
                         .where(ReadingStart.reader_id == r0).order_by(ReadingStart.id)).all()
        assert rows == [(shas[0], 1, t0), (shas[1], 1, t1), (shas[0], 2, t1)]
        assert s.scalar(select(func.count()).select_from(ReadingStart).where(ReadingStart.reader_id == r1)) == 0
    with factory.begin() as s:
        stray = storage.add_image(s, np.full((40, 50), 0.5, np.float32)).sha256
    with pytest.raises(NotAssignedError, match="not in reader"):
        with factory.begin() as s:
            storage.record_shown(s, reader_id=r0, image_sha=stray, session_id=sid)


@core
def test_record_shown_that_loses_a_race_returns_the_winners_time(factory, engine):
    (r0, _), shas, sid = seed_db(factory)
    winner = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=timezone.utc)
    fired = []

    def another_request_wins(conn, name):  # lands after our read, just before our SAVEPOINT and insert
        if not fired:
            fired.append(name)
            conn.execute(insert(ReadingStart.__table__).values(
                session_id=sid, reader_id=r0, image_sha=shas[0], version=1, shown_at=winner))

    event.listen(engine, "savepoint", another_request_wins)
    try:
        with factory.begin() as s:
            got = storage.record_shown(s, reader_id=r0, image_sha=shas[0], session_id=sid,
                                       now=winner + timedelta(seconds=5))
            assert got == winner
            submit(s, r0, shas[0], sid)  # the transaction goes on after the lost race
    finally:
        event.remove(engine, "savepoint", another_request_wins)
    assert fired
    with factory() as s:
        assert s.scalars(select(ReadingStart.shown_at)).all() == [winner]
        assert storage.latest_annotation(s, reader_id=r0, image_sha=shas[0], session_id=sid).shown_at == winner


@core
def test_concurrent_first_shows_agree_on_one_time(factory):
    (r0, _), shas, sid = seed_db(factory)
    got, errors, barrier = [], [], threading.Barrier(4)
    base = datetime(2026, 5, 6, 7, 0, tzinfo=timezone.utc)

    def show(i):
        try:
            barrier.wait()
            with factory.begin() as s:
                got.append(storage.record_shown(s, reader_id=r0, image_sha=shas[0], session_id=sid,
                                                now=base + timedelta(seconds=i)))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=show, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(got) == 4 and len(set(got)) == 1
    with factory() as s:
        assert s.scalars(select(ReadingStart.shown_at)).all() == [got[0]]


# --- SQLite specifics ---------------------------------------------------------------------------


def test_make_engine_creates_folder_and_sets_pragmas(tmp_path):
    path = tmp_path / "new" / "deeper" / "a.db"
    engine = storage.make_engine(f"sqlite:///{path}", busy_timeout_ms=4321)
    try:
        assert path.exists() and storage.current_revision(engine) == "0006"
        with engine.connect() as conn:
            pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in
                       ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")}
        assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 4321, "synchronous": 2}
        assert {"readers", "images", "annotations", "drafts", "model_results"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_default_url_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATABASE_URL", f"sqlite:///{tmp_path / 'env' / 'x.db'}")
    engine = storage.make_engine()
    engine.dispose()
    assert (tmp_path / "env" / "x.db").exists()
    monkeypatch.delenv("CXR_DATABASE_URL")
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "data"))
    storage.make_engine().dispose()
    assert (tmp_path / "data" / "annotations.db").exists()


def test_in_memory_database_is_shared_by_sessions():
    engine = storage.make_engine("sqlite://")
    factory = storage.session_factory(engine)
    with factory.begin() as s:
        storage.add_reader(s, "m")
    with factory() as s:
        assert [r.name for r in storage.list_readers(s)] == ["m"]


def test_bad_input_names_what_was_given(factory):
    (r0, _), shas, sid = seed_db(factory)
    cases = [
        (lambda s: storage.add_reader(s, "x", "boss"), StorageError,
         "role 'boss'; expected one of reviewer, sme, researcher, admin"),
        (lambda s: storage.add_reader(s, "r0"), StorageError, "already exists"),
        (lambda s: storage.add_reader(s, "  "), StorageError, "empty"),
        (lambda s: storage.create_session(s, name="study", image_shas=shas, reader_ids=[r0]), StorageError,
         "already exists"),
        (lambda s: storage.create_session(s, name="n", image_shas=["f" * 64], reader_ids=[r0]), StorageError,
         "not stored"),
        (lambda s: storage.create_session(s, name="n", image_shas=[], reader_ids=[r0]), StorageError, "at least one"),
        (lambda s: storage.assign_reader(s, sid, r0), StorageError, "already assigned"),
        (lambda s: storage.reader_queue(s, sid, 999), StorageError, "not assigned"),
        (lambda s: storage.add_image(s, np.zeros((3, 3), np.float32), sha256="xyz"), StorageError, "64 lower-case hex"),
        (lambda s: storage.add_image(s, np.full((3, 3), 2.0)), Exception, r"expected finite values in \[0, 1\]"),
        (lambda s: submit(s, r0, shas[0], sid, diagnosis="flu"), AnnotationError,
         "diagnosis 'flu'; expected one of COVID-19, Normal, Pneumonia, Tuberculosis, uncertain"),
        (lambda s: submit(s, r0, shas[0], sid, confidence=7), AnnotationError, "confidence 7; expected an integer 1"),
        (lambda s: submit(s, r0, shas[0], sid, canvas_width=0), AnnotationError, "canvas size 0 x 40"),
        (lambda s: storage.revise_annotation(s, 12345), AnnotationError, "12345 does not exist"),
        (lambda s: storage.load_pixels(s, "0" * 64), StorageError, "000000000000... is not stored"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            with factory.begin() as s:
                call(s)


def test_uncertain_diagnosis_and_background_image_not_stored(factory):
    (r0, _), shas, sid = seed_db(factory)
    data = {**canvas(square(0, 0, 3)), "backgroundImage": {"type": "Image", "src": "data:image/png;base64,AAAA"}}
    with factory.begin() as s:
        a = submit(s, r0, shas[0], sid, canvas_json=data, diagnosis="Uncertain")
    assert a.diagnosis == "uncertain" and "backgroundImage" not in a.canvas_json


def test_a_draft_keeps_the_readers_comment_until_submit(factory):
    (r0, _), shas, sid = seed_db(factory)
    with factory.begin() as s:
        storage.save_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid, canvas_json=canvas(),
                           canvas_width=50, canvas_height=40, comment="=ask Dr B; motion blur")
    with factory() as s:
        assert storage.get_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid).comment == "=ask Dr B; motion blur"
    with factory.begin() as s:
        storage.save_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid, canvas_json=canvas(),
                           canvas_width=50, canvas_height=40, comment="")
    with factory() as s:
        assert storage.get_draft(s, reader_id=r0, image_sha=shas[0], session_id=sid).comment is None
