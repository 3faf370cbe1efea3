"""predict: batched, compiled once, same numbers as calling the model; temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.io.imaging import load_xray
from cxr_core.models.manifest import ModelCard, load_model, save_model
from cxr_core.models.predict import Prediction, compiled_forward, predict, predict_arrays, predict_loaded, scale_temperature
from cxr_core.models.preprocess import prepare_batch
from cxr_core.models.zoo import ModelSpec

from conftest import FIXTURES

CLASSES = ("COVID-19", "Normal", "Pneumonia")
SPEC = ModelSpec("custom", "Custom", "", 32, "tf", "conv")


@pytest.fixture(scope="module")
def model():
    """A tiny 3-class softmax model on 32 px inputs, with weights large enough to give varied outputs."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0), name="logits")(x)
    return keras.Model(inp, keras.layers.Activation("softmax")(x))


@pytest.fixture(scope="module")
def xrays():
    return [load_xray(path) for path in sorted((FIXTURES / "cxr").glob("*.png"))]


def test_one_prediction_per_xray_matching_the_model_itself(model, xrays):
    preds = predict(model, SPEC, xrays, CLASSES)
    assert len(preds) == len(xrays) == 4 and all(isinstance(p, Prediction) for p in preds)
    direct = np.asarray(model(prepare_batch([x.pixels for x in xrays], SPEC)), np.float64)
    np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), direct, atol=1e-6)
    for p in preds:
        assert p.classes == CLASSES and p.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    assert len({p.predicted for p in preds} | {float(p.confidence) for p in preds}) > 2  # not a constant answer


def test_batches_give_the_same_numbers_as_one_at_a_time(model, xrays):
    together = predict_arrays(model, SPEC, [x.pixels for x in xrays], batch_size=3)  # batches of 3 and 1
    alone = np.concatenate([predict_arrays(model, SPEC, [x.pixels]) for x in xrays])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_forward_function_is_built_and_traced_once_per_model(model, xrays):
    fn = compiled_forward(model, SPEC.input_size)
    assert compiled_forward(model, SPEC.input_size) is fn
    predict(model, SPEC, xrays[:1], CLASSES)
    predict(model, SPEC, xrays, CLASSES, batch_size=2)
    assert fn.experimental_get_tracing_count() == 1


def test_no_xrays_give_no_predictions(model):
    assert predict(model, SPEC, [], CLASSES) == []
    assert predict_arrays(model, SPEC, []).shape == (0, 3)


def test_prediction_fields_and_dict():
    pred = Prediction(CLASSES, np.array([0.2, 0.5, 0.3]), np.array([0.1, 0.7, 0.2]), 1.5)
    assert pred.predicted == "Normal" and pred.confidence == 0.5
    assert pred.to_dict() == {
        "classes": list(CLASSES),
        "probabilities": {"COVID-19": 0.2, "Normal": 0.5, "Pneumonia": 0.3},
        "raw_probabilities": {"COVID-19": 0.1, "Normal": 0.7, "Pneumonia": 0.2},
        "temperature": 1.5,
        "predicted": "Normal",
    }


def test_temperature_divides_the_logits():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    softmax = lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # noqa: E731
    probs = softmax(logits)
    assert scale_temperature(probs, 1.0) is probs
    np.testing.assert_allclose(scale_temperature(probs, 2.0), softmax(logits / 2.0), atol=1e-9)
    np.testing.assert_allclose(scale_temperature(probs, 0.5), softmax(logits / 0.5), atol=1e-9)


def test_predict_shows_scaled_and_keeps_raw_probabilities(model, xrays):
    plain = predict(model, SPEC, xrays, CLASSES)
    warm = predict(model, SPEC, xrays, CLASSES, temperature=3.0)
    for p, w in zip(plain, warm):
        np.testing.assert_allclose(w.raw_probabilities, p.probabilities, atol=1e-7)
        assert w.predicted == p.predicted and w.confidence < p.confidence and w.temperature == 3.0


def test_predict_loaded_uses_the_cards_temperature(model, xrays, tmp_path):
    card = ModelCard(name="calibrated", architecture="custom", classes=list(CLASSES), input_size=32,
                     preprocessing="tf", last_conv_layer="conv", calibration={"temperature": 2.0})
    save_model(model, card, tmp_path)
    loaded = load_model("calibrated", tmp_path)
    got = predict_loaded(loaded, xrays)
    expected = predict(model, SPEC, xrays, CLASSES, temperature=2.0)
    np.testing.assert_allclose(
        np.stack([p.probabilities for p in got]), np.stack([p.probabilities for p in expected]), atol=1e-6
    )
    assert {p.temperature for p in got} == {2.0}
