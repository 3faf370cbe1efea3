"""The blinding gate on a real SQLite file: hidden while pending in a blind session, shown after."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core import storage

from cxr_core.safety import blinding
from cxr_core.errors import CXRError


@pytest.fixture
def factory(tmp_path):
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'blind.db'}")
    yield storage.session_factory(engine)
    engine.dispose()


@pytest.fixture
def study(factory):
    """Readers ann and ben; images a, b in blind session 'blind-1' for both; image a also in
    blind 'blind-2' for ann; image c in open (non-blind) 'open' for ann; image d in no session."""
    rng = np.random.default_rng(3)
    with factory.begin() as s:
        ann, ben, cat = (storage.add_reader(s, n).id for n in ("ann", "ben", "cat"))
        a, b, c, d = (storage.add_image(s, rng.random((20, 20), dtype=np.float32)).sha256 for _ in range(4))
        one = storage.create_session(s, name="blind-1", image_shas=[a, b], reader_ids=[ann, ben]).id
        two = storage.create_session(s, name="blind-2", image_shas=[a], reader_ids=[ann]).id
        open_ = storage.create_session(s, name="open", image_shas=[c], reader_ids=[ann], blind=False).id
        storage.save_model_result(
            s, image_sha=a, model_name="m", model_checksum="0" * 64, method="gradcam", target="Normal",
            probabilities={"Normal": 0.7}, heatmap=np.zeros((20, 20), np.float32))
    return dict(ann=ann, ben=ben, cat=cat, a=a, b=b, c=c, d=d, one=one, two=two, open=open_)


def submit(factory, reader, sha, session_id):
    with factory.begin() as s:
        return storage.submit_annotation(
            s, reader_id=reader, image_sha=sha, session_id=session_id, diagnosis="Normal", confidence=3,
            canvas_json={"objects": []}, canvas_width=20, canvas_height=20).id


def decision(factory, reader, sha):
    with factory() as s:
        return blinding.model_output_decision(s, reader, sha)


def test_pending_image_is_hidden_from_its_reader_with_a_reason(factory, study):
    d = decision(factory, study["ann"], study["b"])
    assert not d.allowed and d.pending_sessions == ("blind-1",)
    assert "pending in your blind session(s) 'blind-1'" in d.reason and "Submit your reading first" in d.reason
    with factory() as s:
        assert not blinding.can_show_model_output(s, study["ann"], study["b"])
        assert blinding.visible_model_results(s, study["ann"], study["a"]) == []
        with pytest.raises(blinding.BlindedError, match="blind-1"):
            blinding.require_model_output(s, study["ann"], study["a"])


def test_revealed_only_after_submitting_in_every_blind_session(factory, study):
    ann, a = study["ann"], study["a"]
    assert decision(factory, ann, a).pending_sessions == ("blind-1", "blind-2")
    submit(factory, ann, a, study["one"])
    d = decision(factory, ann, a)
    assert not d.allowed and d.pending_sessions == ("blind-2",)
    first = submit(factory, ann, a, study["two"])
    d = decision(factory, ann, a)
    assert d.allowed and d.pending_sessions == () and "submitted in every blind session" in d.reason
    with factory() as s:
        assert [r.probabilities for r in blinding.visible_model_results(s, ann, a)] == [{"Normal": 0.7}]
        blinding.require_model_output(s, ann, a)  # no error
    with factory.begin() as s:  # a later revision does not hide it again
        storage.revise_annotation(s, first, confidence=5)
    assert decision(factory, ann, a).allowed


def test_blinding_is_per_reader(factory, study):
    submit(factory, study["ann"], study["b"], study["one"])
    assert decision(factory, study["ann"], study["b"]).allowed
    assert not decision(factory, study["ben"], study["b"]).allowed  # ben has not read it yet
    d = decision(factory, study["cat"], study["b"])  # cat is in no session
    assert d.allowed and "No blind session" in d.reason


def test_open_sessions_and_unstored_images_are_not_blinded(factory, study):
    assert decision(factory, study["ann"], study["c"]).allowed  # pending, but not blind
    assert decision(factory, study["ann"], study["d"]).allowed
    assert decision(factory, study["ann"], "f" * 64).allowed  # an upload never stored


def test_nobody_chosen_hides_what_anyone_still_reads_blind(factory, study):
    d = decision(factory, None, study["b"])
    assert not d.allowed and "Choose who you are" in d.reason
    submit(factory, study["ann"], study["b"], study["one"])
    assert not decision(factory, None, study["b"]).allowed  # ben still pending
    submit(factory, study["ben"], study["b"], study["one"])
    assert decision(factory, None, study["b"]).allowed
    assert decision(factory, None, study["c"]).allowed


def test_hidden_images_lists_every_pending_blind_image(factory, study):
    with factory() as s:
        assert blinding.hidden_images(s, study["ann"]) == {study["a"], study["b"]}
        assert blinding.hidden_images(s, study["cat"]) == set()
        assert blinding.hidden_images(s, None) == {study["a"], study["b"]}
    submit(factory, study["ann"], study["b"], study["one"])
    with factory() as s:
        assert blinding.hidden_images(s, study["ann"]) == {study["a"]}


def test_unknown_reader_is_an_error(factory, study):
    with factory() as s:
        with pytest.raises(CXRError, match="reader id 999 does not exist"):
            blinding.can_show_model_output(s, 999, study["a"])
