"""Model-aware refusal: real chest films pass; a photograph, a document, a knee film, noise and a
blank image are refused with a plain reason and its figures by the library, the CLI (exit 2, other files
still scored) and the review page (no chart, no heatmap); the expert override shows the scores and is
logged; the shipped demo detector is the one its card and the defaults describe."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import skimage.data
from PIL import Image
from pydicom.data import get_testdata_file

from conftest import FIXTURES
from cxr_core.cli import main
from cxr_core.errors import ChecksumError, ModelError
from cxr_core.io.imaging import load_xray
from cxr_core.models.manifest import load_model, read_card, write_card
from cxr_core.safety.detector import DETECTOR_REASON, FeatureOOD
from cxr_core.safety.screening import (
    DETECTOR_FILE,
    LUNG_FEATURES,
    REFUSAL,
    Screener,
    ScreeningError,
    extract_features,
    feature_layer,
    features_for,
    fit_detector,
    fit_model_detector,
    grouped_cv_scores,
    lung_features,
    decision_record,
    override_record,
    refusal_lines,
    refusal_message,
    screen,
)

CHEST_FILMS = sorted((FIXTURES / "cxr").glob("*.png")) + sorted((FIXTURES / "ood").glob("*.png"))
CHEST = FIXTURES / "cxr" / "covid_hannover_b343e657.png"
#: Non-chest inputs and words their refusal must contain.
REFUSED = {
    "photo.png": "This is a colour picture",
    "document.png": "looks like noise, text or a fine texture",
    "noise.png": "looks like noise",
    "blank.png": "The image is blank",
    "knee.dcm": "shows the extremity, not the chest",
}
#: ... and words of the figures behind it (``details``).
DETAILS = {
    "photo.png": "colourfulness 0.",
    "document.png": "high-frequency energy 0.17, limit 0.15",
    "noise.png": "high-frequency energy 1.",
    "blank.png": "grey-level spread 0.000, limit 0.027",
    "knee.dcm": "DICOM BodyPartExamined EXTREMITY",
}


@pytest.fixture(scope="module")
def non_chest(tmp_path_factory):
    """A colour photograph, a document scan, uniform noise, a blank image and a knee radiograph, as files."""
    folder = tmp_path_factory.mktemp("not-chest")
    rng = np.random.default_rng(0)
    Image.fromarray(skimage.data.astronaut()).save(folder / "photo.png")
    Image.fromarray(skimage.data.page()).save(folder / "document.png")
    Image.fromarray((rng.random((300, 400)) * 255).astype(np.uint8)).save(folder / "noise.png")
    Image.fromarray(np.full((256, 256), 128, np.uint8)).save(folder / "blank.png")
    shutil.copyfile(get_testdata_file("RG3_UNCR.dcm", download=False), folder / "knee.dcm")
    return {name: folder / name for name in REFUSED}


@pytest.fixture(scope="module")
def tiny(tiny_registry):
    return load_model("tiny-effnet", tiny_registry)


@pytest.fixture
def own_copy(tiny_registry, tmp_path, monkeypatch):
    """tiny-effnet copied into a registry of this test's own (cards written here touch no other test)."""
    weights = tmp_path / "weights"
    shutil.copytree(tiny_registry / "tiny-effnet", weights / "tiny-effnet")
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    return weights


# --- the library ---------------------------------------------------------------------------------


def test_real_chest_films_pass(tiny):
    for path in CHEST_FILMS:
        decision = screen(tiny, load_xray(path))
        assert decision.ok and decision.reasons == [], (path.name, decision.reasons)
        assert decision.score is None  # the tiny model has no feature detector: image checks only


@pytest.mark.parametrize("name", REFUSED)
def test_non_chest_inputs_are_refused_with_a_reason(tiny, non_chest, name):
    decision = screen(tiny, load_xray(non_chest[name]))
    assert not decision.ok
    assert any(REFUSED[name] in r for r in decision.reasons), decision.reasons
    assert len(decision.details) == len(decision.reasons) == len(decision.checks)
    assert any(DETAILS[name] in d for d in decision.details), decision.details
    assert not any(any(ch.isdigit() for ch in r) for r in decision.reasons)  # figures live in details only
    message = refusal_message(decision)
    assert message.startswith(REFUSAL + " (") and REFUSED[name] in message and DETAILS[name] in message
    record = decision_record(decision)
    assert record["details"] == decision.details and record["reasons"] == decision.reasons
    assert refusal_lines(decision) == list(zip(decision.reasons, decision.details))


def test_decisions_built_from_reasons_alone_still_phrase_and_record():
    from cxr_core.safety.ood import OODDecision

    old = OODDecision(False, ["could not be screened (bad file)"])
    assert refusal_lines(old) == [("could not be screened (bad file)", "")]
    assert refusal_message(old) == f"{REFUSAL} (could not be screened (bad file))"
    assert decision_record(old)["details"] == [""]


def test_the_shipped_demo_detector_is_the_one_its_card_and_the_defaults_describe():
    from cxr_core.models.manifest import file_sha256
    from cxr_core.safety.detector import DEFAULT_K, DEFAULT_METHOD, DEFAULT_PERCENTILE

    folder = FIXTURES.parent.parent / "weights" / "demo-efficientnetv2b0"
    entry = json.loads((folder / "card.json").read_text())["ood"]
    det = FeatureOOD.load(folder / DETECTOR_FILE)
    assert entry["sha256"] == file_sha256(folder / DETECTOR_FILE)
    assert (det.method, det.k, det.percentile) == (entry["method"], entry["k"], entry["percentile"])
    assert (det.method, det.k, det.percentile) == (DEFAULT_METHOD, DEFAULT_K, DEFAULT_PERCENTILE)
    assert det.threshold == pytest.approx(entry["threshold"]) and len(det.bank) == entry["n_fit"]


def test_features_are_the_pool_output_and_batching_does_not_change_them(tiny):
    import keras

    from cxr_core.models.preprocess import prepare_batch

    images = [load_xray(p).pixels for p in CHEST_FILMS[:3]]
    feats = extract_features(tiny.model, tiny.spec, images)
    direct = keras.Model(tiny.model.inputs, tiny.model.get_layer("pool").output)(prepare_batch(images, tiny.spec))
    assert feats.shape == (3, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, np.asarray(direct), rtol=1e-4, atol=1e-5)
    one_by_one = np.concatenate([extract_features(tiny.model, tiny.spec, [im]) for im in images])
    np.testing.assert_allclose(one_by_one, feats, rtol=1e-4, atol=1e-5)
    hidden = extract_features(tiny.model, tiny.spec, images[:1], layer="hidden_1")
    assert hidden.shape == (1, 225)


def test_lung_features_are_batch_independent_and_the_default_source(tiny):
    images = [load_xray(p).pixels for p in CHEST_FILMS[:3]]
    feats = lung_features(images)
    assert feats.shape == (3, 128) and feats.dtype == np.float32
    assert np.all(feats[:, 64:] >= 0)  # the second half are spreads
    np.testing.assert_allclose(np.concatenate([lung_features([im]) for im in images]), feats, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(features_for(tiny, images, LUNG_FEATURES), feats)
    photo = lung_features([skimage.data.camera() / 255.0])
    nearest_real = np.linalg.norm(feats - photo, axis=1).min()
    assert nearest_real > np.linalg.norm(feats[0] - feats[1])  # a photograph lies further from films than they do


def test_feature_layer_prefers_pool_and_names_what_is_missing(tiny):
    import keras

    assert feature_layer(tiny.model) == "pool"
    assert feature_layer(tiny.model, "hidden_1") == "hidden_1"
    with pytest.raises(ScreeningError, match="has no layer 'nope' to take features from"):
        feature_layer(tiny.model, "nope")
    inp = keras.Input((32, 32, 3))
    bare = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inp)), name="bare")
    with pytest.raises(ScreeningError, match="none of the layers pool, hidden_1"):
        feature_layer(bare)


def test_cross_fitted_threshold_refuses_about_one_percent_of_new_films_and_survives_saving(tmp_path):
    rng = np.random.default_rng(0)
    train, new = rng.normal(size=(400, 16)) + 3.0, rng.normal(size=(2000, 16)) + 3.0  # like ReLU features
    far = rng.normal(size=(50, 16)) - 3.0  # another direction: far for k-NN (on unit vectors) and Mahalanobis
    for method in ("knn", "mahalanobis"):
        det = fit_detector(train, method=method, k=3, percentile=99.0)
        assert 0.002 <= np.mean(det.score(new) > det.threshold) <= 0.02
        assert np.all(det.score(far) > det.threshold)
        det.save(tmp_path / f"{method}.npz")
        again = FeatureOOD.load(tmp_path / f"{method}.npz")
        np.testing.assert_array_equal(again.score(new), det.score(new))
        assert again.threshold == det.threshold and again.percentile == 99.0
    assert fit_detector(train).bank.dtype == np.float16  # a quarter of the float64 size


def test_patients_with_several_films_are_left_out_together():
    rng = np.random.default_rng(1)
    patients = rng.normal(size=(200, 16)) + 3.0
    films = np.repeat(patients, 2, axis=0) + rng.normal(scale=0.01, size=(400, 16))  # two near-identical films each
    new = rng.normal(size=(1000, 16)) + 3.0
    groups = np.repeat(np.arange(200), 2)
    unit = films / np.linalg.norm(films, axis=1, keepdims=True)  # k-NN compares directions
    twin_distance = np.linalg.norm(unit[0::2] - unit[1::2], axis=1).max()
    grouped = grouped_cv_scores(films, groups, k=1)
    naive = grouped_cv_scores(films, None, k=1)  # a film's twin mostly stays in the bank
    assert grouped.min() > 10 * twin_distance  # scored like a new patient's film
    assert np.mean(naive <= twin_distance) > 0.7
    det = fit_detector(films, groups, k=1)
    assert np.mean(det.score(new) > det.threshold) <= 0.03
    with pytest.raises(ScreeningError, match="at least 2 patients"):
        fit_detector(films[:2], [7, 7])


def test_a_detector_beside_the_model_adds_its_score_and_a_feature_reason(own_copy):
    loaded = load_model("tiny-effnet")
    train, val = CHEST_FILMS[4:], CHEST_FILMS[:4]
    entry = fit_model_detector(loaded, train, val_files=val, k=2, percentile=100.0)
    assert (own_copy / "tiny-effnet" / DETECTOR_FILE).is_file()
    assert entry["features"] == LUNG_FEATURES and entry["dim"] == 128 and entry["method"] == "knn"
    assert entry["n_fit"] == 6 and entry["n_val"] == 4 and 0 <= entry["val_refusal_rate"] <= 1
    assert len(entry["lung_model_sha256"]) == 64 and "cross-fitted" in entry["threshold_rule"]
    card = read_card(own_copy / "tiny-effnet")
    card.extra["ood"] = entry
    write_card(own_copy / "tiny-effnet", card)
    loaded = load_model("tiny-effnet")
    decision = screen(loaded, load_xray(val[0]))
    assert decision.score > 0 and decision.threshold == pytest.approx(entry["threshold"])
    assert decision.ok == (decision.score <= decision.threshold)
    screener = Screener.from_loaded(loaded)
    screener.detector.threshold = -1.0  # every film now lies beyond the threshold
    refused = screener.screen([load_xray(val[0])])[0]
    assert not refused.ok and refused.reasons == [DETECTOR_REASON] and refused.checks == ["detector"]
    figures = f"distance to the nearest training films {refused.score:.3f}, threshold -1.000"
    assert refused.details[0].startswith(figures)
    screener.detector.threshold = np.inf
    assert screener.screen([load_xray(val[0])])[0].ok


def test_a_classifier_layer_can_be_the_feature_source(own_copy):
    loaded = load_model("tiny-effnet")
    entry = fit_model_detector(loaded, CHEST_FILMS[4:], features="hidden_1", k=1)
    assert entry["features"] == "hidden_1" and entry["dim"] == 225 and "lung_model_sha256" not in entry
    card = read_card(own_copy / "tiny-effnet")
    card.extra["ood"] = entry
    write_card(own_copy / "tiny-effnet", card)
    screener = Screener.from_loaded(load_model("tiny-effnet"))
    assert screener.features == "hidden_1" and screener.screen([load_xray(CHEST)])[0].score is not None


def test_the_detector_file_must_match_the_card(own_copy):
    loaded = load_model("tiny-effnet")
    entry = fit_model_detector(loaded, CHEST_FILMS[4:], k=1)
    folder = own_copy / "tiny-effnet"
    card = read_card(folder)
    card.extra["ood"] = {**entry, "lung_model_sha256": "0" * 64}
    write_card(folder, card)
    with pytest.raises(ChecksumError, match="fitted on another lung model's features"):
        Screener.from_loaded(load_model("tiny-effnet"))
    card.extra["ood"] = entry
    write_card(folder, card)
    with (folder / DETECTOR_FILE).open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ChecksumError, match="ood.npz does not match the SHA-256 in its card"):
        Screener.from_loaded(load_model("tiny-effnet"))
    (folder / DETECTOR_FILE).unlink()
    with pytest.raises(ModelError, match="OOD detector .* is missing; rerun `python -m cxr_core calibrate"):
        Screener.from_loaded(load_model("tiny-effnet"))


def test_override_is_logged_and_recorded(tiny, non_chest, caplog):
    decision = screen(tiny, load_xray(non_chest["noise.png"]))
    with caplog.at_level(logging.WARNING, logger="cxr_core.safety.screening"):
        record = override_record(decision, model="tiny-effnet", image="noise.png", where="test", by="dr-a")
    assert record["overridden"] is True and record["by"] == "dr-a" and record["reasons"] == decision.reasons
    assert any("expert override" in m and "noise.png" in m and "dr-a" in m for m in caplog.messages)


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_refuses_each_non_chest_file_and_still_scores_the_chest_film(use_registry, non_chest, tmp_path,
                                                                            capsys):
    out = tmp_path / "out"
    paths = [str(CHEST), *map(str, non_chest.values())]
    assert main(["predict", "--keep-names", *paths, "--model", "tiny-effnet", "--json", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == len(REFUSED)
    for line, (name, words) in zip(errors, REFUSED.items()):
        assert line.startswith(f"{non_chest[name]}: {REFUSAL} (") and words in line, line
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["file"] for r in records] == paths
    assert records[0]["ood"]["ok"] is True and sum(records[0]["probabilities"].values()) == pytest.approx(1.0)
    for record in records[1:]:
        assert record["analysed"] is False and "probabilities" not in record and record["ood"]["reasons"]
    assert json.loads((out / "noise.json").read_text())["message"].startswith(REFUSAL)


def test_cli_allow_ood_scores_a_refused_file_and_logs_the_override(use_registry, non_chest, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="cxr_core.safety.screening"):
        assert main(["predict", "--keep-names",
                     str(non_chest["noise.png"]), "--model", "tiny-effnet", "--json", "--allow-ood"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert set(record["probabilities"]) == {"COVID-19", "Normal", "Pneumonia", "Tuberculosis"}
    assert record["ood"]["overridden"] is True and REFUSED["noise.png"] in record["ood"]["reasons"][0]
    assert "high-frequency energy" in record["ood"]["details"][0]
    assert "expert override (--allow-ood)" in captured.err
    assert any("expert override" in m and "cli --allow-ood" in m for m in caplog.messages)


# --- the review page -----------------------------------------------------------------------------


def _page(non_chest, *names):
    from test_page_review import start, upload

    files = [(n, non_chest[n].read_bytes(), "image/png") for n in names]
    return upload(start(), *files, ("chest.png", CHEST.read_bytes(), "image/png"))


def test_page_refuses_non_chest_uploads_without_chart_or_heatmap(use_registry, non_chest):
    from test_page_review import captions, charts, main_chart, texts

    names = ["photo.png", "document.png", "noise.png", "blank.png"]
    at = _page(non_chest, *names)
    for name in names:
        at.radio(key="review_selected").set_value(next(k for k in at.radio(key="review_selected").options
                                                       if k.endswith(name))).run()
        assert not at.exception
        refusals = [e for e in texts(at, "error") if "this does not look like a frontal chest X-ray" in e]
        assert len(refusals) == 1 and REFUSED[name] in refusals[0], texts(at, "error")
        assert not charts(at)
        assert f"{name} (not analysed)" in captions(at)
        assert not any("overlay" in c or "Grad-CAM" in c for c in captions(at))
        assert not [b for b in at.get("download_button") if b.proto.label != "Download summary (CSV)"]
        assert at.checkbox(key=f"review_ood_override::{at.radio(key='review_selected').value}").value is False
    at.radio(key="review_selected").set_value(at.radio(key="review_selected").options[-1]).run()
    assert main_chart(at) and not any("does not look like" in e for e in texts(at, "error"))


def test_page_expert_override_shows_the_scores_and_is_logged_once(use_registry, non_chest, caplog):
    from test_page_review import charts, main_chart, texts

    at = _page(non_chest, "noise.png")
    selected = at.radio(key="review_selected").value
    assert selected.endswith("noise.png") and not charts(at)
    with caplog.at_level(logging.WARNING, logger="cxr_core.safety.screening"):
        at.checkbox(key=f"review_ood_override::{selected}").check().run()
        at.slider(key="review_opacity").set_value(0.6).run()  # a rerun must not log again
    assert not at.exception
    assert main_chart(at)
    assert any(w.startswith("Expert override") for w in texts(at, "warning"))
    logged = [m for m in caplog.messages if "expert override" in m and "review page" in m]
    assert len(logged) == 1 and "noise.png" not in logged[0]  # the log names the film by its label only
    assert at.session_state["review_selected"] and "film-" in logged[0]
    assert {model for model, _ in at.session_state["review_ood_overrides_logged"]} == {"tiny-effnet"}
