"""Reading times: every version timed from the server's first-shown time, summaries checked against numpy."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from cxr_core import storage
from cxr_core.annotation.reading_times import ReadingTime, TimeSummary, reading_times, summarise_times

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def factory(tmp_path):
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'times.db'}")
    yield storage.session_factory(engine)
    engine.dispose()


def _seed(factory, *, images=3, name="study"):
    rng = np.random.default_rng(3)
    with factory.begin() as s:
        readers = [storage.add_reader(s, n).id for n in (f"{name}-b", f"{name}-a")]
        shas = [storage.add_image(s, rng.random((20, 24), dtype=np.float32)).sha256 for _ in range(images)]
        sid = storage.create_session(s, name=name, image_shas=shas, reader_ids=readers, seed=1).id
    return readers, shas, sid


def _submit(s, reader, sha, sid, **kw):
    return storage.submit_annotation(s, reader_id=reader, image_sha=sha, session_id=sid, diagnosis="Normal",
                                     confidence=3, canvas_json={"objects": []}, canvas_width=24, canvas_height=20,
                                     **kw)


def test_every_version_is_timed_from_its_own_first_show(factory):
    (rb, ra), shas, sid = _seed(factory)
    with factory.begin() as s:
        storage.record_shown(s, reader_id=ra, image_sha=shas[0], session_id=sid, now=T0)
        v1 = _submit(s, ra, shas[0], sid)
    with factory.begin() as s:
        storage.record_shown(s, reader_id=ra, image_sha=shas[0], session_id=sid, now=T0 + timedelta(hours=1))
        v2 = storage.revise_annotation(s, v1.id, exclusion="not readable")
        storage.record_shown(s, reader_id=rb, image_sha=shas[1], session_id=sid, now=T0 + timedelta(minutes=5))
        b1 = _submit(s, rb, shas[1], sid)
        untimed = _submit(s, rb, shas[2], sid)  # no start recorded
    with factory() as s:
        times = reading_times(s)
    assert [(t.session, t.reader, t.image_sha, t.version) for t in times] == [
        ("study", "study-a", shas[0], 1), ("study", "study-a", shas[0], 2),
        ("study", "study-b", shas[1], 1), ("study", "study-b", shas[2], 1)]
    expected = [(T0, v1), (T0 + timedelta(hours=1), v2), (T0 + timedelta(minutes=5), b1)]
    for t, (shown, ann) in zip(times, expected):
        assert (t.shown_at, t.submitted_at) == (shown, ann.created_at)
        assert t.seconds == pytest.approx((ann.created_at - shown).total_seconds(), abs=1e-6) and t.seconds > 0
    assert (times[3].shown_at, times[3].seconds, times[3].submitted_at) == (None, None, untimed.created_at)
    with factory() as s:
        assert [t.version for t in reading_times(s, reader_id=ra)] == [1, 2]
        assert [t.reader for t in reading_times(s, session_id=sid, reader_id=rb)] == ["study-b", "study-b"]
        assert reading_times(s, session_id=sid + 1) == []


def test_filters_keep_sessions_apart(factory):
    (rb, ra), shas, sid = _seed(factory, images=1, name="one")
    (rb2, _), shas2, sid2 = _seed(factory, images=1, name="two")
    with factory.begin() as s:
        _submit(s, ra, shas[0], sid)
        _submit(s, rb2, shas2[0], sid2)
    with factory() as s:
        assert [(t.session, t.reader) for t in reading_times(s)] == [("one", "one-a"), ("two", "two-b")]
        assert [(t.session, t.reader) for t in reading_times(s, session_id=sid2)] == [("two", "two-b")]
        assert reading_times(s, session_id=sid2, reader_id=ra) == []


def _planted(session, reader, seconds):
    submitted = T0 + timedelta(days=1)
    return [ReadingTime(session, reader, f"{i:064x}", 1, None if x is None else submitted - timedelta(seconds=x),
                        submitted, x) for i, x in enumerate(seconds)]


def test_summaries_per_reader_and_for_all_readers_match_numpy():
    dr_b = [30.0, 12.5, 48.0, 95.0, 20.0, None]
    dr_a = [61.0, 7.0, 15.5, None, None]
    other = [None, None]
    times = _planted("s1", "dr-b", dr_b) + _planted("s1", "dr-a", dr_a) + _planted("s2", "dr-a", other)
    rows = summarise_times(times)
    assert [(r.session, r.reader, r.n, r.untimed) for r in rows] == [
        ("s1", "dr-a", 3, 2), ("s1", "dr-b", 5, 1), ("s1", None, 8, 3), ("s2", "dr-a", 0, 2), ("s2", None, 0, 2)]
    for row, seconds in zip(rows[:3], (dr_a, dr_b, dr_a + dr_b)):
        timed = [x for x in seconds if x is not None]
        q1, median, q3 = np.percentile(timed, [25, 50, 75], method="linear")
        assert (row.q1_s, row.median_s, row.q3_s) == pytest.approx((q1, median, q3))
        assert row.iqr_s == pytest.approx(q3 - q1)
    # by hand for Dr B: sorted 12.5, 20, 30, 48, 95 -> q1 20, median 30, q3 48 (linear interpolation)
    assert (rows[1].q1_s, rows[1].median_s, rows[1].q3_s, rows[1].iqr_s) == (20.0, 30.0, 48.0, 28.0)
    # Dr A: 7, 15.5, 61 -> q1 = 7 + 0.5 * 8.5, q3 = 15.5 + 0.5 * 45.5
    assert (rows[0].q1_s, rows[0].median_s, rows[0].q3_s) == (11.25, 15.5, 38.25)
    assert (rows[3].median_s, rows[3].q1_s, rows[3].q3_s, rows[3].iqr_s) == (None, None, None, None)
    assert summarise_times([]) == []


def test_one_timed_reading_is_its_own_median_with_no_spread():
    [row, everyone] = summarise_times(_planted("s", "r", [42.0]))
    assert row == TimeSummary("s", "r", 1, 42.0, 42.0, 42.0, untimed=0) and row.iqr_s == 0.0
    assert everyone.reader is None and everyone.n == 1
    with pytest.raises(AttributeError):  # records are frozen
        row.n = 2


def test_summary_of_stored_times_matches_numpy(factory):
    (rb, ra), shas, sid = _seed(factory)
    with factory.begin() as s:
        for i, sha in enumerate(shas):
            for j, reader in enumerate((ra, rb)):
                storage.record_shown(s, reader_id=reader, image_sha=sha, session_id=sid,
                                     now=T0 - timedelta(minutes=7 * i + 3 * j))
                _submit(s, reader, sha, sid)
    with factory() as s:
        times = reading_times(s, session_id=sid)
    rows = {r.reader: r for r in summarise_times(times)}
    assert set(rows) == {"study-a", "study-b", None}
    for reader in ("study-a", "study-b", None):
        seconds = [t.seconds for t in times if reader in (None, t.reader)]
        assert rows[reader].n == len(seconds) == (6 if reader is None else 3) and rows[reader].untimed == 0
        assert rows[reader].median_s == pytest.approx(float(np.median(seconds)))
        assert rows[reader].iqr_s == pytest.approx(float(np.subtract(*np.percentile(seconds, [75, 25]))))
