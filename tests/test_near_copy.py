"""Near-copies of a pending film are blinded too: re-saved as JPEG, cropped by a few pixels, one pixel changed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES
from cxr_core import storage
from cxr_core.safety import blinding, near_copy
from cxr_core.io.imaging import load_xray

PENDING = FIXTURES / "audit" / "hannover_21982772.png"
OTHERS = [FIXTURES / "audit" / n for n in ("hannover_4fed5061.png", "hannover_61bc50d1.png",
                                          "kermany224_NORMAL2-IM-0252-0001.png", "nih14_00030006_002.png")]


def jpeg_copy(pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).astype(np.uint8)).save(buffer, "JPEG", quality=70)
    return load_xray(buffer.getvalue()).pixels


def edits(pixels: np.ndarray) -> dict[str, np.ndarray]:
    one = pixels.copy()
    one[40, 40] = 1.0 - one[40, 40]
    return {"jpeg": jpeg_copy(pixels), "crop 3 px": pixels[3:-3, 3:-3], "crop top 4 px": pixels[4:],
            "one pixel": one}


@pytest.fixture
def study(tmp_path):
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'near.db'}")
    factory = storage.session_factory(engine)
    film = load_xray(PENDING)
    with factory.begin() as s:
        ann, ben = storage.add_reader(s, "ann").id, storage.add_reader(s, "ben").id
        storage.add_xray(s, film)
        session = storage.create_session(s, name="blind-1", image_shas=[film.sha256], reader_ids=[ann]).id
    yield factory, film, ann, ben, session
    engine.dispose()


def test_hash_distance_separates_edits_from_other_films():
    film = load_xray(PENDING).pixels
    base = near_copy.perceptual_hash(film)
    for what, copy in edits(film).items():
        assert near_copy.distance(base, near_copy.perceptual_hash(copy)) <= near_copy.MAX_DISTANCE, what
    for other in OTHERS:
        assert near_copy.distance(base, near_copy.perceptual_hash(load_xray(other).pixels)) > near_copy.MAX_DISTANCE


def test_exact_hash_alone_misses_every_edit_but_the_gate_with_pixels_hides_them(study):
    factory, film, ann, ben, _ = study
    for what, copy in edits(film.pixels).items():
        sha = load_xray(_png(copy)).sha256
        assert sha != film.sha256
        with factory() as s:
            assert blinding.model_output_decision(s, ann, sha).allowed, "without pixels only exact copies are known"
            decision = blinding.model_output_decision(s, ann, sha, copy)
            assert not decision.allowed, what
            assert decision.pending_sessions == ("blind-1",) and "looks like a copy" in decision.reason
            # nobody chosen: stricter, still hidden; another reader with nothing pending: shown
            assert not blinding.model_output_decision(s, None, sha, copy).allowed
            assert blinding.model_output_decision(s, ben, sha, copy).allowed


def test_other_films_pass_and_copies_pass_once_the_reading_is_submitted(study):
    factory, film, ann, _, session = study
    other = load_xray(OTHERS[0])
    with factory() as s:
        assert blinding.model_output_decision(s, ann, other.sha256, other.pixels).allowed
    with factory.begin() as s:
        storage.submit_annotation(s, reader_id=ann, image_sha=film.sha256, session_id=session, diagnosis="Normal",
                                  confidence=3, canvas_json={"objects": []}, canvas_width=100, canvas_height=100)
    copy = edits(film.pixels)["jpeg"]
    with factory() as s:
        assert blinding.model_output_decision(s, ann, "0" * 64, copy).allowed


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 65535).astype(np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()
