"""Sanity checks (Adebayo et al. 2018): the similarity measures against scipy/skimage, the randomised copy,
and the verdict on a model-free edge detector (must fail) and on a small trained CNN (must pass)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import rankdata

from cxr_core.explain.sanity import (
    THRESHOLD, RandomisedCopy, SanityError, blocks_top_down, cam_explainer, edge_maps, randomisation_study,
    run_sanity, spearman, ssim, verdict,
)
from cxr_core.models.zoo import ModelSpec

SIDE = 32  # network input of the tiny CNN
CLASSES = ("bright", "dark")
SPEC = ModelSpec("tinycnn", "Tiny CNN", "", SIDE, "tf", "top_conv")


def blob_films(n: int, seed: int = 0, side: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Noisy grey films with a bright (class 0) or dark (class 1) blob somewhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    films, labels = [], []
    for i in range(n):
        label = i % 2
        cx, cy = rng.uniform(0.25, 0.75, 2) * side
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (side / 10) ** 2))
        sign = 1.0 if label == 0 else -1.0
        films.append(np.clip(0.5 + 0.4 * sign * blob + rng.normal(0, 0.05, (side, side)), 0, 1).astype(np.float32))
        labels.append(label)
    return np.stack(films), np.array(labels)


def tiny_cnn(train: bool = True):
    """A three-conv CNN (blocks block1, block2, top, logits) trained for a few seconds to find the blob."""
    import keras

    from cxr_core.models.preprocess import prepare_batch

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIDE, SIDE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="block2_conv")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="top_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(len(CLASSES), name="logits")(x)
    model = keras.Model(inp, keras.layers.Activation("softmax", name="probabilities")(logits), name="tiny_cnn")
    if train:
        films, labels = blob_films(96, seed=1)
        x_train = prepare_batch(list(films), SPEC)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(x_train, labels, epochs=10, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained():
    return tiny_cnn()


# --- the measures --------------------------------------------------------------------------------

def test_spearman_is_pearson_of_ranks_and_blank_maps_score_zero():
    rng = np.random.default_rng(3)
    a = rng.random((20, 20))
    b = a + rng.normal(0, 0.3, a.shape)
    b[:3] = 0.0  # ties get their mean rank
    by_hand = np.corrcoef(rankdata(a.ravel()), rankdata(b.ravel()))[0, 1]
    assert spearman(a, b) == pytest.approx(by_hand, abs=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.zeros_like(a)) == 0.0  # a blank map shares no ranking
    with pytest.raises(SanityError, match="differ in size"):
        spearman(a, a[:10])


@pytest.mark.parametrize("shape", [(11, 11), (32, 32), (40, 57)])
def test_ssim_matches_skimage(shape):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(sum(shape))
    a = rng.random(shape)
    for b in (a, np.clip(a + rng.normal(0, 0.2, shape), 0, 1), rng.random(shape), np.zeros(shape)):
        expected = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
        assert ssim(a, b) == pytest.approx(expected, abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_refuses_maps_smaller_than_its_window():
    with pytest.raises(SanityError, match="at least 11 pixels"):
        ssim(np.zeros((10, 30)), np.zeros((10, 30)))


# --- randomising a copy --------------------------------------------------------------------------

def test_blocks_run_from_the_output_down_by_name():
    model = tiny_cnn(train=False)
    assert [b.name for b in blocks_top_down(model)] == ["logits", "top", "block2", "block1"]


def test_efficientnet_blocks_group_layers_and_skip_the_normalisation_constants():
    from cxr_core.models.zoo import build_model

    blocks = blocks_top_down(build_model("efficientnetv2b0", ("a", "b"), weights=None, input_size=32))
    names = [b.name for b in blocks]
    assert names[:4] == ["logits", "hidden_1", "top", "block6h"] and names[-2:] == ["block1a", "stem"]
    assert len(names) == len(set(names))
    assert {"top_conv", "top_bn"} == {lyr.name for lyr in blocks[2].layers}
    layers = {lyr.name for b in blocks for lyr in b.layers}
    assert not any("normalization" in n or "rescaling" in n for n in layers)  # preprocessing, not learning


def test_randomising_the_copy_leaves_the_original_alone(trained):
    before = [w.copy() for w in trained.get_weights()]
    x = np.random.default_rng(0).random((2, SIDE, SIDE, 3)).astype(np.float32)
    out = np.asarray(trained(x))
    copy = RandomisedCopy(trained, seed=1)
    assert np.allclose(np.asarray(copy.model(x)), out)
    for block in copy.blocks:
        copy.randomise(block)
    assert not np.allclose(np.asarray(copy.model(x)), out, atol=1e-3)
    assert all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights()))
    kernel = copy.model.get_layer("block1_conv").kernel.numpy()
    copy.restore()
    assert np.allclose(np.asarray(copy.model(x)), out)
    again = RandomisedCopy(trained, seed=1)  # same seed, same random weights
    again.randomise(again.blocks[-1])
    assert np.array_equal(again.model.get_layer("block1_conv").kernel.numpy(), kernel)


# --- the verdict ---------------------------------------------------------------------------------

def test_edge_detector_fails_the_check(trained):
    """The paper's control: a map that ignores the model is unchanged by any randomisation."""
    from cxr_core.explain.faithfulness import network_pixels

    films, _ = blob_films(8, seed=5)
    net = np.stack([network_pixels(f, SPEC) for f in films])
    study = randomisation_study(RandomisedCopy(trained), lambda: edge_maps(net), n_boot=200)
    assert [r["spearman_abs"]["mean"] for r in study["cascade"]] == pytest.approx([1.0] * 4)
    assert study["cascade"][-1]["ssim"]["mean"] == pytest.approx(1.0)
    result = verdict(study["cascade"])
    assert result["verdict"] == "fail" and f"threshold {THRESHOLD}" in result["reason"]


def test_grad_cam_of_a_trained_cnn_passes_and_depends_on_each_block(trained):
    from cxr_core.explain.cam import CamEngine
    from cxr_core.explain.faithfulness import network_pixels

    films, _ = blob_films(10, seed=7)
    net = np.stack([network_pixels(f, SPEC) for f in films])
    copy = RandomisedCopy(trained, seed=0)
    engine = CamEngine.from_model(copy.model, SPEC, CLASSES)
    targets = np.array([r.target_index for r in engine.run_arrays(list(net))])
    explain = cam_explainer(engine, net, targets, "gradcam")
    before = explain()
    study = randomisation_study(copy, explain, n_boot=200)
    final = study["cascade"][-1]
    assert final["spearman_abs"]["ci95"][1] < THRESHOLD
    assert verdict(study["cascade"])["verdict"] == "pass"
    assert [r["block"] for r in study["independent"]] == ["logits", "top", "block2", "block1"]
    assert study["independent"][0]["spearman_abs"]["mean"] < 0.9  # new logits alone change the map
    assert np.allclose(explain(), before, atol=1e-6)  # the copy's learned weights are back


def test_run_sanity_refuses_unknown_methods_and_no_films(trained):
    with pytest.raises(SanityError, match="cannot be checked"):
        run_sanity(trained, SPEC, CLASSES, [np.zeros((40, 40))], methods=("random",))
    with pytest.raises(SanityError, match="no films"):
        run_sanity(trained, SPEC, CLASSES, [])


# --- the command ---------------------------------------------------------------------------------

@pytest.fixture
def tiny_registered(tmp_path, monkeypatch, trained):
    """The trained tiny CNN registered as ``tiny-cnn`` and a class-folder data set of blob films."""
    import cv2

    from cxr_core.models.manifest import ModelCard, save_model

    weights = tmp_path / "weights"
    save_model(trained, ModelCard(name="tiny-cnn", architecture="tinycnn", classes=list(CLASSES), input_size=SIDE,
                                  preprocessing="tf", last_conv_layer="top_conv"), weights)
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    data = tmp_path / "films"
    films, labels = blob_films(6, seed=11, side=64)  # load_xray refuses films under 64 px
    for i, (film, label) in enumerate(zip(films, labels)):
        (data / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / CLASSES[label] / f"film{i}.png"), (film * 255).astype(np.uint8))
    return weights / "tiny-cnn", data


def test_cli_writes_json_and_leaves_the_model_folder_alone(tiny_registered, tmp_path, capsys):
    from cxr_core.cli import main

    folder, data = tiny_registered
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "sanity-out.json"
    assert main(["sanity", "--model", "tiny-cnn", "--data", str(data), "--limit", "4", "--steps", "4",
                 "--n-boot", "100", "--json", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no sanity.json without --record
    result = json.loads(out.read_text())
    assert result["schema"] == "cxr-sanity/1" and result["model"] == "tiny-cnn" and result["n_films"] == 4
    assert sorted(result["films"]) == ["bright/film0.png", "bright/film2.png", "dark/film1.png", "dark/film3.png"]
    assert result["threshold"]["value"] == THRESHOLD and "Adebayo" in result["threshold"]["why"]
    assert set(result["methods"]) == {"gradcam", "gradcam++"}
    for method in result["methods"].values():
        assert method["verdict"] in ("pass", "fail", "inconclusive") and method["reason"]
        for kind in ("cascade", "independent"):
            assert [r["block"] for r in method[kind]] == ["logits", "top", "block2", "block1"]
            for row in method[kind]:
                for measure in ("spearman", "spearman_abs", "ssim"):
                    lo, hi = row[measure]["ci95"]
                    assert -1 <= lo <= row[measure]["mean"] <= hi <= 1
        for mode in ("deletion", "insertion"):
            faith = method["faithfulness"][mode]
            assert faith["fractions"] == [0, 0.25, 0.5, 0.75, 1] and len(faith["mean_curve"]) == 5
            assert 0 <= faith["auc"]["mean"] <= 1
    assert set(result["random_baseline"]["faithfulness"]) == {"deletion", "insertion"}
    printed = capsys.readouterr().out
    assert "gradcam: " in printed and "deletion AUC" in printed and "not recorded" in printed


def test_cli_record_keeps_the_result_next_to_the_model(tiny_registered, capsys):
    from cxr_core.cli import main

    folder, data = tiny_registered
    card = (folder / "card.json").read_bytes()
    assert main(["sanity", "--model", "tiny-cnn", "--data", str(data), "--limit", "2", "--steps", "2",
                 "--n-boot", "50", "--method", "gradcam", "--cascade-only", "--record"]) == 0
    record = json.loads((folder / "sanity.json").read_text())
    assert list(record["methods"]) == ["gradcam"] and record["methods"]["gradcam"]["independent"] == []
    assert (folder / "card.json").read_bytes() == card
    assert main(["sanity", "--model", "tiny-cnn", "--data", str(data), "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


# --- the models page -----------------------------------------------------------------------------

def _row(step: int, block: str, rho: float, sim: float) -> dict:
    band = {"mean": rho, "ci95": [rho - 0.05, rho + 0.05]}
    return {"step": step, "block": block, "layers": [block], "spearman": band, "spearman_abs": band,
            "ssim": {"mean": sim, "ci95": [sim - 0.05, sim + 0.05]}, "blank_maps": 0}


def _faith(deletion: float, insertion: float) -> dict:
    return {mode: {"auc": {"mean": v, "ci95": [v - 0.01, v + 0.01]}, "fractions": [0, 1], "mean_curve": [1, 0]}
            for mode, v in (("deletion", deletion), ("insertion", insertion))}


def test_models_page_shows_the_recorded_verdict_chart_and_aucs(tmp_path, monkeypatch):
    from test_page_models import charts, models_page, register

    from cxr_core.models.manifest import check_entry
    from cxr_core.explain.sanity import RECORD_FILE, SCHEMA

    root = tmp_path / "weights"
    register(root, "checked-model")
    register(root, "unchecked-model")
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(root))
    cascade = [_row(1, "logits", 0.62, 0.55), _row(2, "top", 0.31, 0.30), _row(3, "stem", 0.08, 0.12)]
    record = {
        "schema": SCHEMA, "model": "checked-model", "model_sha256": check_entry(root / "checked-model").card.sha256,
        "data": "data/samples", "n_films": 8,
        "threshold": {"value": THRESHOLD, "rule": "pass: mean and 95% upper bound below"},
        "methods": {
            "gradcam": {**verdict(cascade), "cascade": cascade, "independent": [], "faithfulness": _faith(0.21, 0.64)},
            "gradcam++": {**verdict([_row(1, "logits", 0.9, 0.9)]), "cascade": [_row(1, "logits", 0.9, 0.9)],
                          "independent": [], "faithfulness": _faith(0.40, 0.41)},
        },
        "random_baseline": {"faithfulness": _faith(0.33, 0.52)},
    }
    (root / "checked-model" / RECORD_FILE).write_text(json.dumps(record))
    at = models_page()
    assert [s.value for s in at.success if s.value.startswith("Grad-CAM:")] == [
        "Grad-CAM: pass — " + record["methods"]["gradcam"]["reason"]]
    assert [e.value for e in at.error if e.value.startswith("Grad-CAM++")] == [
        "Grad-CAM++: fail — " + record["methods"]["gradcam++"]["reason"]]
    figures = charts(at)
    cascade_chart = figures["models_sanity::checked-model::gradcam"]
    assert cascade_chart["data"][0]["x"] == ["logits", "top", "stem"] and cascade_chart["data"][0]["y"] == [
        0.62, 0.31, 0.08]
    assert cascade_chart["data"][1]["name"] == "SSIM" and cascade_chart["data"][1]["y"] == [0.55, 0.30, 0.12]
    tables = [df.value for df in at.dataframe if "Random heatmap" in df.value.columns]
    assert tables[0].to_dict("records")[0] == {"Curve": "Deletion AUC (lower is better)",
                                               "This method": "0.2100 [0.2000, 0.2200]",
                                               "Random heatmap": "0.3300 [0.3200, 0.3400]"}
    how = [c.value for c in at.caption if c.value.startswith("No sanity check recorded")]
    assert how == ["No sanity check recorded for this model. `python -m cxr_core sanity --model unchecked-model "
                   "--data DIR --record` runs the checks on the films in DIR and keeps the result here."]


def test_models_page_says_when_a_record_is_unreadable_or_stale(tmp_path, monkeypatch):
    from test_page_models import models_page, register

    from cxr_core.explain.sanity import RECORD_FILE, SCHEMA

    root = tmp_path / "weights"
    register(root, "broken-record")
    register(root, "stale-record")
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(root))
    (root / "broken-record" / RECORD_FILE).write_text("{not json")
    cascade = [_row(1, "logits", 0.1, 0.1)]
    (root / "stale-record" / RECORD_FILE).write_text(json.dumps({
        "schema": SCHEMA, "model_sha256": "0" * 64, "methods": {
            "gradcam": {**verdict(cascade), "cascade": cascade, "faithfulness": {}}}}))
    at = models_page()
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("The stored sanity check cannot be read") and "broken-record" in w for w in warnings)
    assert any("different model file" in w for w in warnings)


def test_unlabelled_folder_films_are_spread_over_the_names(tmp_path):
    from cxr_core.cli.commands.sanity import film_paths
    from cxr_core.errors import DataError

    for name in ("a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2", "c3"):
        (tmp_path / f"{name}.png").write_bytes(b"")
    (tmp_path / "notes.md").write_text("not a film")
    assert [p.stem for p in film_paths(tmp_path, 3)] == ["a1", "b2", "c3"]
    assert len(film_paths(tmp_path, 50)) == 9
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        film_paths(tmp_path / "empty", 3)


def test_a_nested_base_is_randomised_inside_its_copy_and_the_original_kept():
    """Imported models may nest their base as one layer; its inner blocks are still randomised, on the copy."""
    import keras

    keras.utils.set_random_seed(2)
    b_in = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv")(b_in)
    base = keras.Model(b_in, keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="top_conv")(x),
                       name="base")
    inp = keras.Input((SIDE, SIDE, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(base(inp))
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="logits")(pooled))
    before = [w.copy() for w in model.get_weights()]
    films, _ = blob_films(4, seed=3)
    result = run_sanity(model, ModelSpec("nested", "Nested", "", SIDE, "tf", "top_conv", base_name="base"), CLASSES,
                        list(films), methods=("gradcam",), n_boot=50, steps=2)
    assert result["settings"]["blocks"] == ["logits", "top", "block1"]
    assert [r["block"] for r in result["methods"]["gradcam"]["cascade"]] == ["logits", "top", "block1"]
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
