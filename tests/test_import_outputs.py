"""Import of models whose last layer gives logits or one sigmoid unit, and Grad-CAM on their pre-softmax score.

Tiny nested-base models (a small backbone used as one layer, as fine-tuning scripts do; one EfficientNetV2B0
with ``weights=None``) are saved to ``.keras`` in temporary folders and registered as a user would. The
reference CAM is written out here from the original file's graph (stack.md pattern C), independent of
``cxr_core.explain.cam``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_core.explain.cam import CamEngine
from cxr_core.cli import main
from cxr_core.errors import ModelError
from cxr_core.models.manifest import ModelCard, import_model, load_model, read_card
from cxr_core.models.predict import predict_arrays
from cxr_core.models.preprocess import prepare_batch

SIZE = 32
LAYER = "conv_b"


def nested(head: str, *, n_classes: int = 3, seed: int = 0):
    """Input -> backbone (nested: conv_a, conv_b) -> GAP -> a last layer of kind ``head``."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv_a")(inp)
    x = keras.layers.Conv2D(8, 3, name=LAYER)(x)  # signed maps: every class has some positive evidence
    backbone = keras.Model(inp, x, name="backbone")
    outer = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(outer, training=False))
    if head == "logits":
        out = keras.layers.Dense(n_classes, name="logits")(h)
    elif head == "softmax":
        out = keras.layers.Dense(n_classes, activation="softmax", name="head")(h)
    elif head == "sigmoid":
        out = keras.layers.Dense(1, activation="sigmoid", name="unit")(h)
    elif head == "sigmoid-activation":
        out = keras.layers.Activation("sigmoid", name="squash")(keras.layers.Dense(1, name="unit_logit")(h))
    elif head == "multi-sigmoid":
        out = keras.layers.Dense(n_classes, activation="sigmoid", name="labels")(h)
    elif head == "rescaled":  # a last layer whose type does not say what it gives
        out = keras.layers.Rescaling(2.0, name="scale")(keras.layers.Dense(n_classes, name="logits")(h))
    else:
        raise ValueError(head)
    return keras.Model(outer, out, name=f"outside_{head.replace('-', '_')}")


def films(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    rows, cols = np.mgrid[0:40, 0:36]
    return [np.clip(0.5 + 0.4 * np.sin(rows / rng.uniform(3, 8)) * np.cos(cols / rng.uniform(3, 8))
                    + rng.normal(0, 0.05, rows.shape), 0, 1).astype(np.float32) for _ in range(n)]


def reference_grid(original, x: np.ndarray, score) -> np.ndarray:
    """Grad-CAM of ``score(last layer's output)`` on the original nested model, normalised to [0, 1]."""
    import keras
    import tensorflow as tf

    base = original.get_layer("backbone")
    inner = keras.Model(base.inputs, [base.get_layer(LAYER).output, base.output])
    head = [lyr for lyr in original.layers if not isinstance(lyr, keras.layers.InputLayer) and lyr is not base]
    with tf.GradientTape() as tape:
        acts, h = inner(x, training=False)
        for lyr in head:
            h = lyr(h, training=False)
        target = tf.reduce_sum(score(h))
    grads = tape.gradient(target, acts)
    cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", acts, tf.reduce_mean(grads, axis=(1, 2)))).numpy()
    low = cam.min(axis=(1, 2), keepdims=True)
    span = cam.max(axis=(1, 2), keepdims=True) - low
    return (cam - low) / np.where(span > 0, span, 1)


def register(tmp_path, head: str, classes, *, seed: int = 0, **kwargs):
    original = nested(head, n_classes=len(classes), seed=seed)
    original.save(tmp_path / f"{head}.keras")
    import_model(tmp_path / f"{head}.keras", head, "custom", list(classes), weights_dir=tmp_path / "w", **kwargs)
    return original, load_model(head, tmp_path / "w")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --- detection and the card ---------------------------------------------------------------------


@pytest.mark.parametrize("head, classes, expected", [
    ("softmax", ["A", "B", "C"], "probabilities"),
    ("logits", ["A", "B", "C"], "logits"),
    ("sigmoid", ["Normal", "Pneumonia"], "sigmoid"),
    ("sigmoid-activation", ["Normal", "Pneumonia"], "sigmoid"),
])
def test_import_detects_the_last_layer_and_records_it_in_the_card(tmp_path, head, classes, expected):
    original, loaded = register(tmp_path, head, classes)
    card = read_card(tmp_path / "w" / head)
    assert card.outputs == expected and loaded.spec.outputs == expected
    assert json.loads((tmp_path / "w" / head / "card.json").read_text())["outputs"] == expected
    assert (card.base_name, card.last_conv_layer) == ("backbone", LAYER)
    if expected == "probabilities":  # the user's file is registered byte for byte, without a note
        assert (tmp_path / "w" / head / "model.keras").read_bytes() == (tmp_path / f"{head}.keras").read_bytes()
        assert card.notes == []
    else:
        assert len(card.notes) == 1 and f"whose last layer {original.layers[-1].name!r}" in card.notes[0]


def test_cards_written_before_outputs_existed_read_as_probabilities():
    card = ModelCard.from_dict({"name": "old", "architecture": "custom", "classes": ["A", "B"], "input_size": 32,
                                "preprocessing": "unit", "last_conv_layer": "conv"})
    assert card.outputs == "probabilities" and card.spec().outputs == "probabilities"
    card.outputs = "odds"
    with pytest.raises(ModelError, match=r"card of old has outputs 'odds'; expected one of probabilities, logits"):
        card.spec()


def test_unusable_or_contradictory_last_layers_are_refused_and_leave_no_entry(tmp_path):
    cases = [
        ("rescaled", ["A", "B", "C"], {}, r"cannot tell what its last layer 'scale' \(Rescaling\) gives; pass "
                                          r"--outputs probabilities\|logits\|sigmoid"),
        ("multi-sigmoid", ["A", "B", "C"], {}, r"last layer 'labels' has 3 sigmoid units \(multi-label scores\)"),
        ("sigmoid", ["A", "B", "C"], {}, r"a single sigmoid unit gives two classes \(1 - p, then p\); got 3"),
        ("softmax", ["A", "B", "C"], {"outputs": "logits"},
         r"--outputs logits, but its last layer 'head' applies a softmax: its outputs are probabilities already"),
        ("logits", ["A", "B", "C"], {"outputs": "probabilities"},
         r"model output sums to .*, not 1: it must end in a softmax .*\(or pass --outputs logits\)"),
        ("logits", ["A", "B"], {"outputs": "sigmoid"}, r"--outputs sigmoid needs one output unit; the model has 3"),
    ]
    for head, classes, kwargs, message in cases:
        nested(head, n_classes=3).save(tmp_path / f"{head}.keras")
        with pytest.raises(ModelError, match=message):
            import_model(tmp_path / f"{head}.keras", "bad", "custom", classes, weights_dir=tmp_path / "w", **kwargs)
        assert not (tmp_path / "w" / "bad").exists(), head


# --- probabilities ------------------------------------------------------------------------------


def test_logits_model_predicts_the_softmax_of_its_logits(tmp_path):
    original, loaded = register(tmp_path, "logits", ["A", "B", "C"])
    images = films()
    x = prepare_batch(images, loaded.spec)
    probs = predict_arrays(loaded.model, loaded.spec, images)
    logits = np.asarray(original(x, training=False), np.float64)
    assert not np.allclose(logits.sum(axis=1), 1.0)  # the file really gives logits
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, softmax(logits), atol=1e-6)


@pytest.mark.parametrize("head", ["sigmoid", "sigmoid-activation"])
def test_sigmoid_model_becomes_two_classes_one_minus_p_and_p(tmp_path, head):
    original, loaded = register(tmp_path, head, ["Normal", "Pneumonia"])
    images = films()
    p = np.asarray(original(prepare_batch(images, loaded.spec), training=False), np.float64)[:, 0]
    probs = predict_arrays(loaded.model, loaded.spec, images)
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, np.stack([1 - p, p], axis=1), atol=1e-6)


# --- Grad-CAM on the pre-softmax score ----------------------------------------------------------


def test_logits_model_cam_equals_the_cam_of_its_logit_not_of_the_probability(tmp_path):
    import tensorflow as tf

    original, loaded = register(tmp_path, "logits", ["A", "B", "C"], seed=1)  # seed: evidence for every class
    engine = CamEngine.from_loaded(loaded)
    images = films()
    x = prepare_batch(images, loaded.spec)
    for k in range(3):
        results = engine.run_arrays(images, target=k)
        assert not any(r.all_zero for r in results)
        grids = np.stack([r.grid for r in results])
        expected = reference_grid(original, x, lambda h: h[:, k])
        np.testing.assert_allclose(grids, expected, atol=1e-5)
        from_probability = reference_grid(original, x, lambda h: tf.nn.softmax(h)[:, k])
        assert not np.allclose(grids, from_probability, atol=1e-3)  # the test can tell the two apart


def test_sigmoid_model_cam_uses_z_for_class_one_and_minus_z_for_class_zero(tmp_path):
    original, loaded = register(tmp_path, "sigmoid", ["Normal", "Pneumonia"], seed=1)  # evidence for both classes
    engine = CamEngine.from_loaded(loaded)
    images = films()
    x = prepare_batch(images, loaded.spec)
    unit = original.get_layer("unit")
    gap = original.get_layer("gap")
    import keras

    def z(h):  # the unit's logit, read from the GAP features the head receives
        return keras.ops.matmul(h, unit.kernel)[:, 0] + unit.bias[0]

    original_without_unit = keras.Model(original.inputs, gap.output)  # backbone, GAP; the unit is in z()
    for target, sign in ((1, 1.0), (0, -1.0)):
        results = engine.run_arrays(images, target=target)
        assert not any(r.all_zero for r in results) and {r.target for r in results} == {loaded.card.classes[target]}
        grids = np.stack([r.grid for r in results])
        expected = reference_grid(original_without_unit, x, lambda h, s=sign: s * z(h))
        np.testing.assert_allclose(grids, expected, atol=1e-5)
    default = engine.run_arrays(images)  # no target: each film's predicted class, as the probabilities say
    probs = predict_arrays(loaded.model, loaded.spec, images)
    assert [r.target_index for r in default] == list(probs.argmax(axis=1))


# --- the command line ----------------------------------------------------------------------------


def test_cli_outputs_flag_overrides_what_the_last_layer_does_not_say(tmp_path, monkeypatch, capsys):
    original = nested("rescaled")
    original.save(tmp_path / "opaque.keras")
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "w"))
    args = ["import-model", str(tmp_path / "opaque.keras"), "--name", "opaque", "--arch", "custom",
            "--classes", "A", "B", "C"]
    assert main(args) == 2
    assert "pass --outputs probabilities|logits|sigmoid" in capsys.readouterr().err
    assert not (tmp_path / "w" / "opaque").exists()
    assert main([*args, "--outputs", "logits"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("outputs logits (softmax applied)")
    loaded = load_model("opaque")
    assert loaded.card.outputs == "logits"
    images = films()
    logits = np.asarray(original(prepare_batch(images, loaded.spec), training=False), np.float64)
    np.testing.assert_allclose(predict_arrays(loaded.model, loaded.spec, images), softmax(logits), atol=1e-6)

    registered = {p.name: p.read_bytes() for p in (tmp_path / "w" / "opaque").iterdir()}
    nested("softmax").save(tmp_path / "other.keras")  # a different model under the same name
    again = ["import-model", str(tmp_path / "other.keras"), *args[2:]]
    assert main(again) == 2
    assert "a model named 'opaque' is already registered" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "w" / "opaque").iterdir()} == registered
    assert main([*again, "--replace"]) == 0
    assert read_card(tmp_path / "w" / "opaque").outputs == "probabilities"


def test_cli_import_and_predict_cam_on_a_nested_efficientnet_ending_in_logits(tmp_path, monkeypatch, capsys):
    import keras

    from conftest import FIXTURES
    from cxr_core.io.imaging import load_xray

    keras.utils.set_random_seed(1)
    base = keras.applications.EfficientNetV2B0(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(base(inp, training=False))
    original = keras.Model(inp, keras.layers.Dense(3, name="logits")(h))
    original.save(tmp_path / "effnet.keras")
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "w"))
    assert main(["import-model", str(tmp_path / "effnet.keras"), "--name", "eff", "--arch", "efficientnetv2b0",
                 "--classes", "COVID-19", "Normal", "Pneumonia"]) == 0
    assert "outputs logits (softmax applied) (detected)" in capsys.readouterr().out
    card = read_card(tmp_path / "w" / "eff")
    assert card.outputs == "logits" and card.base_name == "efficientnetv2-b0"

    film = FIXTURES / "cxr" / "normal_kermany224_IM-0001-0001.png"
    assert main(["predict", "--keep-names",
                 str(film), "--model", "eff", "--cam", "gradcam", "--target", "Normal", "--json",
                 "--allow-ood", "--out", str(tmp_path / "out")]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    xray = load_xray(film)
    x = prepare_batch([xray.pixels], card.spec())
    expected = softmax(np.asarray(original(x, training=False), np.float64))[0]
    np.testing.assert_allclose(list(record["raw_probabilities"].values()), expected, atol=1e-5)
    assert sum(record["probabilities"].values()) == pytest.approx(1.0)
    assert record["cam"]["target"] == "Normal"
    heat = np.load(tmp_path / "out" / f"{film.stem}.heatmap.npy")
    assert heat.shape == xray.pixels.shape and heat.min() >= 0.0 and heat.max() <= 1.0
