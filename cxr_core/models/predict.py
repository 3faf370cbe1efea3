"""Class probabilities for X-rays from a loaded model, batched and compiled once per model."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxr_core.io.imaging import XRay
from cxr_core.models.preprocess import prepare_batch
from cxr_core.models.zoo import ModelSpec

_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Prediction:
    """A model's answer for one X-ray. Scores are model outputs, not diagnoses.

    ``probabilities`` are the scores to show (temperature-scaled when the model is calibrated);
    ``raw_probabilities`` are the network's own softmax outputs.
    """

    classes: tuple[str, ...]
    probabilities: np.ndarray
    raw_probabilities: np.ndarray
    temperature: float = 1.0

    @property
    def predicted(self) -> str:
        return self.classes[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))

    def to_dict(self) -> dict:
        """JSON-ready fields shared by the CLI and the app's download."""
        return {
            "classes": list(self.classes),
            "probabilities": {c: float(p) for c, p in zip(self.classes, self.probabilities)},
            "raw_probabilities": {c: float(p) for c, p in zip(self.classes, self.raw_probabilities)},
            "temperature": self.temperature,
            "predicted": self.predicted,
        }


def compiled_forward(model, input_size: int):
    """A ``tf.function`` of ``model(x, training=False)`` with a fixed input signature, made once per model."""
    import tensorflow as tf

    fn = _COMPILED.get(model)
    if fn is None:
        spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)
        _COMPILED[model] = fn
    return fn


def scale_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of log-probabilities divided by ``temperature`` (equal to scaling the logits)."""
    if temperature == 1.0:
        return probabilities
    logp = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=-1, keepdims=True)


def predict_arrays(model, spec: ModelSpec, images: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
    """Raw softmax outputs (N, K) for [0, 1] grayscale images, in batches."""
    fn = compiled_forward(model, spec.input_size)
    out = []
    for start in range(0, len(images), batch_size):
        batch = prepare_batch(list(images[start:start + batch_size]), spec)
        out.append(np.asarray(fn(batch), dtype=np.float64))
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]))


def predict(
    model,
    spec: ModelSpec,
    xrays: Sequence[XRay],
    classes: Sequence[str],
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
) -> list[Prediction]:
    """Predict every X-ray; probabilities are temperature-scaled when ``temperature != 1``."""
    raw = predict_arrays(model, spec, [x.pixels for x in xrays], batch_size=batch_size)
    shown = scale_temperature(raw, temperature)
    return [Prediction(tuple(classes), s, r, float(temperature)) for s, r in zip(shown, raw)]


def card_temperature(card) -> float:
    """The temperature a model card's calibration gives its scores (1.0 when uncalibrated)."""
    return float(card.calibration.get("temperature", 1.0) or 1.0)


def predict_loaded(loaded, xrays: Sequence[XRay], *, batch_size: int = 16) -> list[Prediction]:
    """:func:`predict` with a registry :class:`~cxr_core.models.manifest.LoadedModel`, using its card's temperature.

    Pages and commands analyse films through :func:`cxr_core.analysis.analyse`, which screens them first.
    """
    temperature = card_temperature(loaded.card)
    return predict(loaded.model, loaded.spec, xrays, loaded.card.classes, temperature=temperature, batch_size=batch_size)
