"""cxr_core.safety.intake: files offered for a session are screened once each, flagged films kept only on request,
unreadable files named, and the films stored are the ones that were screened."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import FIXTURES
from cxr_core import storage
from cxr_core.safety import intake
from cxr_core.errors import CXRError
from cxr_core.io.imaging import load_xray
from cxr_core.safety.ood import OODDecision
from cxr_core.safety.screening import Screener

CHEST = FIXTURES / "cxr" / "covid_hannover_b343e657.png"
CHECKS = Screener(None)  # the image checks alone: what screening does without a model's detector


def checks(xray):
    return CHECKS.screen([xray])[0]


@pytest.fixture
def db(tmp_path):
    return storage.session_factory(storage.make_engine(f"sqlite:///{tmp_path / 'a.db'}"))


@pytest.fixture
def folder(tmp_path):
    """A chest film, a colour photograph and a file that is not an image."""
    out = tmp_path / "batch"
    out.mkdir()
    (out / "chest.png").write_bytes(CHEST.read_bytes())
    Image.fromarray(skimage.data.astronaut()).save(out / "photo.png")
    (out / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"junk")
    return out


def test_uploads_are_keyed_by_content_and_exact_duplicates_listed_once():
    data = CHEST.read_bytes()
    files = intake.from_uploads([("a.png", data), ("a.png", data), ("b.png", data), ("c.png", b"other")])
    assert [f.name for f in files] == ["a.png", "b.png", "c.png"]
    assert files[0].key == files[1].key != files[2].key  # same content, another name: screened once, listed twice
    assert len({f.ident for f in files}) == 3


def test_screening_gives_a_verdict_per_file_in_order_and_a_thumbnail_only_for_flagged_films(folder):
    out = intake.screen_files(intake.from_folder(folder), checks)
    assert [(x.name, x.verdict) for x in out] == [
        ("broken.jpg", "not readable"), ("chest.png", "chest film"), ("photo.png", "flagged: not a frontal chest X-ray")]
    broken, chest, photo = out
    assert "JPEG" in broken.error and broken.reason == broken.error and broken.decision is None
    assert chest.reason == "" and chest.thumb is None and chest.image_sha == load_xray(CHEST).sha256
    assert photo.reason.startswith("This is a colour picture") and photo.thumb.dtype == np.uint8
    assert max(photo.thumb.shape) == intake.THUMB_SIDE and chest.size == load_xray(CHEST).shape[::-1]


def test_cached_verdicts_are_not_screened_again_unless_the_screener_or_the_file_changes(folder):
    calls = []

    def counting(xray):
        calls.append(xray.name)
        return checks(xray)

    cache = intake.VerdictCache()
    files = intake.from_folder(folder)
    first = intake.screen_files(files, counting, cache=cache, tag="checks")
    assert sorted(calls) == ["chest.png", "photo.png"] and len(cache) == 3  # the unreadable file is cached too
    seen = []
    again = intake.screen_files(intake.from_folder(folder), counting, cache=cache, tag="checks",
                                progress=lambda done, todo, name: seen.append(name))
    assert len(calls) == 2 and not seen and [x.verdict for x in again] == [x.verdict for x in first]
    intake.screen_files(files, counting, cache=cache, tag="model:abc")  # another screener: screened again
    assert len(calls) == 4
    stat = (folder / "chest.png").stat()
    os.utime(folder / "chest.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed
    intake.screen_files(intake.from_folder(folder), counting, cache=cache, tag="checks",
                        progress=lambda done, todo, name: seen.append((done, todo, name)))
    assert calls[-1] == "chest.png" and seen == [(0, 1, "chest.png")]


def test_the_cache_keeps_the_most_recent_verdicts_only():
    cache = intake.VerdictCache(max_entries=2)
    verdicts = [intake.Screened(f"{i}.png", str(i)) for i in range(3)]
    for i, v in enumerate(verdicts[:2]):
        cache.put("t", str(i), v)
    assert cache.get("t", "0") is verdicts[0]  # now the most recent
    cache.put("t", "2", verdicts[2])
    assert len(cache) == 2 and cache.get("t", "1") is None and cache.get("t", "0") is verdicts[0]


def test_a_screener_failure_flags_the_film_instead_of_passing_it():
    def broken(xray):
        raise CXRError("detector file missing")

    [x] = intake.screen_files(intake.from_uploads([("chest.png", CHEST.read_bytes())]), broken)
    assert x.flagged and x.reason == "could not be screened (detector file missing)"


def test_only_chest_films_and_kept_flagged_films_are_stored(db, folder):
    files = intake.from_folder(folder)
    screened = intake.screen_files(files, checks)
    photo = next(x for x in screened if x.name == "photo.png")
    with db.begin() as s:
        reader = storage.add_reader(s, "Dr A", "sme").id
        plain = intake.create_session(s, name="plain", files=files, screened=screened, reader_ids=[reader])
        kept = intake.create_session(s, name="kept", files=files, screened=screened, keep={photo.ident},
                                     reader_ids=[reader])
    # films by their label, never their file name; only unreadable files (no film, never stored) by name
    assert (plain.stored, plain.dropped, plain.kept, plain.unreadable) == (1, [photo.film], [], ["broken.jpg"])
    assert (kept.stored, kept.dropped, kept.kept) == (2, [], [photo.film])
    assert photo.film == f"film-{photo.image_sha[:8]}"
    assert kept.summary() == (f"Kept 1 flagged film(s) by your choice: {photo.film}. "
                              "Left out 1 file(s) that could not be read: broken.jpg. "  # the photo has text-like
                              f"Left the burned-in text on 1 film(s) by your choice: {photo.film}.")  # marks
    with db.begin() as s:
        queues = {n: storage.reader_queue(s, storage.get_session(s, n).id, reader) for n in ("plain", "kept")}
        assert {e.image_sha for e in queues["plain"].entries} == {load_xray(CHEST).sha256}
        assert {e.image_sha for e in queues["kept"].entries} == {load_xray(CHEST).sha256, photo.image_sha}


def test_nothing_is_stored_when_no_film_is_left_or_a_file_changed_after_screening(db, folder):
    files = intake.from_folder(folder)
    screened = intake.screen_files(files, checks)
    with db.begin() as s:
        reader = storage.add_reader(s, "Dr A", "sme").id
    only_flagged = [x for x in screened if x.name != "chest.png"]
    with db.begin() as s, pytest.raises(intake.IntakeError, match="no film left to put in the session"):
        intake.create_session(s, name="none", files=files, screened=only_flagged, reader_ids=[reader])
    Image.fromarray(skimage.data.camera()).save(folder / "chest.png")  # replaced after screening
    with pytest.raises(intake.IntakeError, match="chest.png has changed since it was screened"):
        with db.begin() as s:
            intake.create_session(s, name="changed", files=files, screened=screened, reader_ids=[reader])
    with db.begin() as s:
        assert storage.list_sessions(s) == [] and storage.get_image(s, load_xray(CHEST).sha256) is None


def test_samples_carry_their_labels_and_say_why_there_are_none(tmp_path):
    files, why = intake.from_samples(tmp_path)
    assert files == [] and "no bundled samples are installed" in why
    (tmp_path / "chest.png").write_bytes(CHEST.read_bytes())
    (tmp_path / "samples.json").write_text('[{"file": "chest.png", "label": "COVID-19"}]')
    files, why = intake.from_samples(tmp_path)
    assert [(f.name, f.label) for f in files] == [("chest.png", "COVID-19")] and why == ""
    assert intake.from_samples(tmp_path, [])[1] == "no sample chosen"
    decision = intake.screen_files(files, checks)[0].decision
    assert isinstance(decision, OODDecision) and decision.ok


def _arrays(obj, seen=None) -> list[np.ndarray]:
    """Every NumPy array reachable through a record's dataclass fields, tuples, lists and dicts."""
    import dataclasses

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [a for f in dataclasses.fields(obj) for a in _arrays(getattr(obj, f.name), seen)]
    if isinstance(obj, (list, tuple)):
        return [a for x in obj for a in _arrays(x, seen)]
    if isinstance(obj, dict):
        return [a for x in obj.values() for a in _arrays(x, seen)]
    return []


def test_intake_streams_films_screened_records_hold_no_pixels_and_every_film_is_stored(db, monkeypatch):
    """Issue 15: screening keeps small facts per film (a thumbnail at most), and both screening and storing
    decode one film at a time: when a film is decoded, at most the one before it is still alive."""
    import gc
    import weakref

    base = load_xray(FIXTURES / "audit" / "hannover_4fed5061.png").pixels  # test_redaction.py's film
    uploads = []
    for i in range(5):  # five different films (each with its own mark), with a burned-in line on the last
        img = np.round(base * 255).astype(np.uint8)
        img[10 + 4 * i: 14 + 4 * i, 10:14] = 255
        if i == 4:
            import cv2

            for text, org in (("DOE_JANE_4711_19700101", (20, 40)), ("DOB 1970-01-01", (20, 70))):
                cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 2)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        uploads.append((f"film{i}.png", buf.getvalue()))
    alive: list[weakref.ref] = []
    most_alive = [0]
    real_load = intake.load_xray

    def watched(source, name=None):
        gc.collect()
        most_alive[0] = max(most_alive[0], sum(r() is not None for r in alive))
        xray = real_load(source, name)
        alive.append(weakref.ref(xray))
        return xray

    monkeypatch.setattr(intake, "load_xray", watched)
    files = intake.from_uploads(uploads)
    screened = intake.screen_files(files, checks)
    assert most_alive[0] <= 1, f"{most_alive[0]} decoded films were alive at once while screening"
    film_pixels = base.size
    for x in screened:
        arrays = _arrays(x)
        assert all(a.size <= intake.THUMB_SIDE**2 for a in arrays), [a.shape for a in arrays]
        assert sum(a.nbytes for a in arrays) <= intake.THUMB_SIDE**2 < film_pixels  # a uint8 thumbnail at most
    assert [x.has_text for x in screened] == [False] * 4 + [True]
    assert screened[4].thumb is not None and screened[0].thumb is None  # chest films without text: no pixels

    alive.clear()
    most_alive[0] = 0
    with db.begin() as s:
        reader = storage.add_reader(s, "Dr A", "sme").id
        result = intake.create_session(s, name="Five", files=files, screened=screened, reader_ids=[reader],
                                       redact={screened[4].ident}, shuffle=False)
    assert most_alive[0] <= 1, f"{most_alive[0]} decoded films were alive at once while storing"
    assert result.stored == 5 and len(result.redacted) == 1
    stored = [x.image_sha for x in screened[:4]] + [result.redacted[0].redacted_sha]
    with db.begin() as s:
        queue = storage.reader_queue(s, storage.get_session(s, "Five").id, reader)
        assert [e.image_sha for e in queue.entries] == stored
        for sha, (name, _) in zip(stored, uploads):
            image = storage.get_image(s, sha)
            assert image is not None and image.original_name == f"film-{sha[:8]}" and name not in repr(image)
