"""Grad-CAM, Grad-CAM++ and a random baseline from one compiled pass, for flat or nested models.

Shaped like pytorch-grad-cam's ``BaseCAM``: one core takes the target layer's activations and
the gradients of the target class's **pre-softmax** score, asks a small per-method function
for the channel weights, and forms ``ReLU(sum_c w_c A_c)``. Probabilities and the CAM come out
of the same ``tf.function`` call (no second forward pass), traced once per engine and method.

The pre-softmax score is the input of the model's final softmax: the file's own logits for models
imported as ``logits`` (the softmax was appended at import), and ``z`` / ``-z`` for class 1 / class 0 of
a model imported as one ``sigmoid`` unit (:mod:`cxr_core.models.model_outputs`).

Heatmaps are min-max normalised **within each image**: colours are relative to that image's
own strongest evidence and cannot be compared across images or models.

Models whose base is nested as one layer (``Output ... is not connected to inputs`` with the
keras.io recipe) are handled by stack.md pattern C: a two-output model on the base's own graph,
then the outer layers replayed in inference mode. The replay is checked against the model's own
output when the engine is made; a model that fails the check gets :class:`CamUnavailableError`,
never a wrong heatmap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cxr_core.explain.binarize import normalize, upsample
from cxr_core.errors import CXRError, ModelError
from cxr_core.io.imaging import XRay, pixel_sha256
from cxr_core.models.model_outputs import output_layer, score_function
from cxr_core.models.predict import Prediction, scale_temperature
from cxr_core.models.lung_crop import uncrop
from cxr_core.models.preprocess import prepare_batch, prepare_cropped
from cxr_core.models.zoo import ModelSpec

METHODS = ("gradcam", "gradcam++", "random")

#: Replayed probabilities must equal the model's own within this (max abs difference).
REPLAY_TOLERANCE = 1e-5
#: A ReLU'd map whose peak is below this fraction of the map's magnitude is "no positive evidence"
#: (float32 round-off, which would otherwise be stretched to [0, 1] by the normalisation).
ZERO_TOLERANCE = 1e-5


class CamUnavailableError(CXRError):
    """No trustworthy heatmap can be computed for this model (the message says why)."""

    def __init__(self, reason: str):
        super().__init__(f"heatmap unavailable for this model: {reason}")


@dataclass(frozen=True)
class CamResult:
    """One X-ray's prediction and class activation map.

    Attributes
    ----------
    prediction : Prediction
        Scores from the same pass, temperature-scaled as :func:`~cxr_core.models.predict.predict_loaded` does.
    method : {"gradcam", "gradcam++", "random"}
    target, target_index : the class the map explains (the predicted one unless asked otherwise).
    grid : (h, w) float32 ndarray
        The map at the target layer's resolution (e.g. 7 x 7), min-max normalised to [0, 1].
    heatmap : (H, W) float32 ndarray
        The map upsampled bilinearly to the X-ray's original size, min-max normalised to [0, 1]
        within this image. For a ``crop_lungs`` model it is computed on the lung crop and placed back
        in the crop's box on the whole film (zero outside it).
    all_zero : bool
        No positive evidence for the target: ``grid`` and ``heatmap`` are all zeros (never NaN).
    """

    prediction: Prediction
    method: str
    target: str
    target_index: int
    grid: np.ndarray
    heatmap: np.ndarray
    all_zero: bool

    def to_dict(self) -> dict:
        """Prediction fields plus a ``cam`` entry (method, target, grid size), JSON-ready."""
        return {
            **self.prediction.to_dict(),
            "cam": {
                "method": self.method,
                "target": self.target,
                "target_index": self.target_index,
                "grid_size": list(self.grid.shape),
                "heatmap_size": list(self.heatmap.shape),
                "all_zero": self.all_zero,
                "scale": "min-max within this image (colours are not comparable across images)",
            },
        }


# --- channel weights, one small function per method (B = batch, C = channels) -------------------

def _gradcam_weights(acts, grads, noise):
    """Grad-CAM (Selvaraju et al. 2017): spatial mean of the gradients."""
    import tensorflow as tf

    return tf.reduce_mean(grads, axis=(1, 2))


def _gradcampp_weights(acts, grads, noise):
    """Grad-CAM++ (Chattopadhyay et al. 2018), as pytorch-grad-cam's ``grad_cam_plusplus.py``."""
    import tensorflow as tf

    g2 = tf.square(grads)
    g3 = g2 * grads
    sum_acts = tf.reduce_sum(acts, axis=(1, 2), keepdims=True)
    alpha = g2 / (2.0 * g2 + sum_acts * g3 + 1e-6)
    alpha = tf.where(grads != 0, alpha, tf.zeros_like(alpha))
    return tf.reduce_sum(tf.nn.relu(grads) * alpha, axis=(1, 2))


def _random_weights(acts, grads, noise):
    """Random baseline (pytorch-grad-cam's ``RandomCAM``): uniform(-1, 1) weights seeded per image."""
    return noise


_WEIGHTS: dict[str, tuple[Callable, bool]] = {  # method -> (weights function, needs gradients)
    "gradcam": (_gradcam_weights, True),
    "gradcam++": (_gradcampp_weights, True),
    "random": (_random_weights, False),
}


def random_channel_weights(sha256: str, channels: int) -> np.ndarray:
    """The random baseline's weights for one image: uniform(-1, 1), seeded by the image's SHA-256."""
    return np.random.default_rng(int(sha256[:16], 16)).uniform(-1.0, 1.0, channels).astype(np.float32)


# --- the model's forward pass as (activations, pre-softmax input, probabilities) -----------------

def _find_base(model, layer_name: str, base_name: str):
    """The nested model layer (one level deep) that contains ``layer_name``."""
    import keras

    candidates = [lyr for lyr in model.layers if isinstance(lyr, keras.Model)]
    candidates.sort(key=lambda lyr: lyr.name != base_name)
    for lyr in candidates:
        if any(inner.name == layer_name for inner in lyr.layers):
            return lyr
    raise CamUnavailableError(f"no layer named {layer_name!r} in the model or in a base nested one level deep")


def _make_forward(model, layer_name: str, base_name: str = "", outputs: str = "probabilities"
                  ) -> tuple[Callable, Callable, int]:
    """``forward(x) -> (activations, final-layer input, probabilities)``, the score function, channels."""
    import keras

    final, node_index = output_layer(model)
    score = score_function(final, outputs)
    if score is None:
        raise CamUnavailableError(
            f"its last layer {final.name!r} ({type(final).__name__}) is not a softmax, so the pre-softmax "
            "class scores Grad-CAM needs cannot be read"
        )
    names = {lyr.name for lyr in model.layers}
    if layer_name in names:  # flat: every tensor is on the model's own graph (pattern A)
        acts = model.get_layer(layer_name).output
        penultimate = final._inbound_nodes[node_index].input_tensors[0]
        grad_model = keras.Model(model.inputs, [acts, penultimate, model.outputs[0]])
        return (lambda x: grad_model(x, training=False)), score, _channels(acts)
    base = _find_base(model, layer_name, base_name)  # nested: pattern C
    acts = base.get_layer(layer_name).output
    inner = keras.Model(base.inputs, [acts, base.outputs[0]])
    layers = [lyr for lyr in model.layers if not isinstance(lyr, keras.layers.InputLayer)]
    if layers[-1] is not final:
        raise CamUnavailableError(f"its output comes from {final.name!r}, not from its last layer {layers[-1].name!r}")

    def forward(x):
        acts, h = None, x
        for lyr in layers[:-1]:
            if lyr is base:
                acts, h = inner(h, training=False)
            else:
                h = lyr(h, training=False)
        return acts, h, final(h, training=False)

    return forward, score, _channels(acts)


def _channels(acts) -> int:
    if len(acts.shape) != 4:
        raise CamUnavailableError(
            f"the target layer's output has shape {tuple(acts.shape)}, not a (batch, rows, cols, channels) map")
    return int(acts.shape[-1])


def resolve_target(classes: Sequence[str], target: str | int | None) -> int:
    """Index of ``target`` (a class name, case-insensitive, or an index) in ``classes``; -1 for None.

    Raises
    ------
    CXRError
        ``target`` is not one of ``classes`` or not a valid index.
    """
    if target is None:
        return -1
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if 0 <= target < len(classes):
            return int(target)
    elif isinstance(target, str):
        lowered = [c.lower() for c in classes]
        if target.strip().lower() in lowered:
            return lowered.index(target.strip().lower())
    raise CXRError(f"target {target!r} is not a class of this model; expected one of {', '.join(classes)} "
                   f"or an index 0..{len(classes) - 1}")


# --- the engine ---------------------------------------------------------------------------------

class CamEngine:
    """Predictions and CAMs for one model; keep it (e.g. ``st.cache_resource``) to reuse its traces.

    Make it with :meth:`from_loaded` (registry models) or :meth:`from_model`; both check that the
    compiled pass reproduces the model's own probabilities within :data:`REPLAY_TOLERANCE`.
    """

    def __init__(self, model, spec: ModelSpec, classes: Sequence[str], *, temperature: float = 1.0):
        self.model = model
        self.spec = spec
        self.classes = tuple(classes)
        self.temperature = float(temperature)
        try:
            self._forward, self._score, self.channels = _make_forward(model, spec.last_conv_layer, spec.base_name,
                                                                      spec.outputs)
        except CamUnavailableError:
            raise
        except Exception as exc:  # Keras raises many types for graphs it cannot split
            raise CamUnavailableError(f"cannot read layer {spec.last_conv_layer!r}: {exc}") from exc
        self._compiled: dict[str, Callable] = {}
        self._verify()

    @classmethod
    def from_loaded(cls, loaded) -> "CamEngine":
        """Engine for a registry :class:`~cxr_core.models.manifest.LoadedModel`, with its card's temperature."""
        temperature = float(loaded.card.calibration.get("temperature", 1.0) or 1.0)
        return cls(loaded.model, loaded.spec, loaded.card.classes, temperature=temperature)

    @classmethod
    def from_model(cls, model, spec: ModelSpec, classes: Sequence[str], *, temperature: float = 1.0) -> "CamEngine":
        """Engine for an in-memory Keras model described by ``spec`` (``spec.last_conv_layer`` is read)."""
        return cls(model, spec, classes, temperature=temperature)

    def _compiled_step(self, method: str) -> Callable:
        """The ``tf.function`` for ``method``: ``(x, targets, noise) -> (probs, target index, raw CAM)``."""
        if method in self._compiled:
            return self._compiled[method]
        import tensorflow as tf

        weights_fn, needs_grads = _WEIGHTS[method]
        size = self.spec.input_size
        signature = [
            tf.TensorSpec([None, size, size, 3], tf.float32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None, None], tf.float32),
        ]

        @tf.function(input_signature=signature, reduce_retracing=True)
        def step(x, targets, noise):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)  # record every op, so frozen bases still give gradients
                acts, penultimate, probs = self._forward(x)
                logits = tf.cast(self._score(penultimate), tf.float32)
                chosen = tf.where(targets < 0, tf.argmax(logits, axis=-1, output_type=tf.int32), targets)
                score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
            grads = tf.cast(tape.gradient(score, acts), tf.float32) if needs_grads else None
            acts = tf.cast(acts, tf.float32)
            weights = weights_fn(acts, grads, noise)
            cam = tf.einsum("bhwc,bc->bhw", acts, weights)
            return tf.cast(probs, tf.float32), chosen, cam

        self._compiled[method] = step
        return step

    def _verify(self) -> None:
        """Check on a probe batch that the compiled pass gives the model's own probabilities."""
        rng = np.random.default_rng(0)
        probe = prepare_batch([rng.uniform(0, 1, (32, 40)).astype(np.float32) for _ in range(2)], self.spec)
        try:
            expected = np.asarray(self.model(probe, training=False))  # the model's own (eager) output
            probs = np.asarray(self._compiled_step("gradcam")(probe, np.full(2, -1, np.int32),
                                                             np.zeros((2, 0), np.float32))[0])
        except Exception as exc:  # a replay that does not fit the graph fails here
            reason = f"its layers cannot be replayed to reach {self.spec.last_conv_layer!r} ({exc})"
            raise CamUnavailableError(reason) from exc
        if probs.shape != expected.shape:
            raise CamUnavailableError(f"replay gives outputs of shape {probs.shape}, the model {expected.shape}")
        if probs.shape[-1] != len(self.classes):
            raise ModelError(f"model outputs {probs.shape[-1]} scores but {len(self.classes)} classes were given "
                             f"({', '.join(self.classes)})")
        diff = float(np.max(np.abs(probs - expected)))
        if not diff <= REPLAY_TOLERANCE:
            raise CamUnavailableError(
                f"replaying its layers gives probabilities that differ from the model's by {diff:.2g} "
                f"(more than {REPLAY_TOLERANCE:g}); its graph is not a single base followed by a chain of layers"
            )

    def resolve_target(self, target: str | int | None) -> int:
        """Class index for a name (case-insensitive) or index; -1 (each image's predicted class) for None."""
        return resolve_target(self.classes, target)

    def run(self, xrays: Sequence[XRay], *, method: str = "gradcam", target: str | int | None = None,
            batch_size: int = 16) -> list[CamResult]:
        """Predict and explain each X-ray; heatmaps come back at each X-ray's original size."""
        return self._run([x.pixels for x in xrays], [x.sha256 for x in xrays], method, target, batch_size)

    def run_arrays(self, images: Sequence[np.ndarray], *, method: str = "gradcam", target: str | int | None = None,
                   batch_size: int = 16) -> list[CamResult]:
        """:meth:`run` for raw ``(H, W)`` pixel arrays in [0, 1] (the random baseline seeds on their SHA-256)."""
        arrays = [np.asarray(im, np.float32) for im in images]
        for i, im in enumerate(arrays):
            if im.ndim != 2 or min(im.shape) == 0:
                raise CXRError(f"image {i} must be a non-empty (H, W) grayscale array; got shape {im.shape}")
        return self._run(arrays, [pixel_sha256(im) for im in arrays], method, target, batch_size)

    def _run(self, images, shas, method, target, batch_size) -> list[CamResult]:
        if method not in METHODS:
            raise CXRError(f"CAM method {method!r} unknown; expected one of {', '.join(METHODS)}")
        if batch_size < 1:
            raise CXRError(f"batch_size must be at least 1; got {batch_size}")
        wanted = self.resolve_target(target)
        step = self._compiled_step(method)
        results: list[CamResult] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            n = len(chunk)
            noise = (np.stack([random_channel_weights(s, self.channels) for s in shas[start:start + n]])
                     if method == "random" else np.zeros((n, 0), np.float32))
            prepared = [prepare_cropped(p, self.spec) for p in chunk]  # crops: None unless spec.crop_lungs
            x = np.stack([inp for inp, _ in prepared])
            probs, chosen, cams = step(x, np.full(n, wanted, np.int32), noise)
            raw = np.asarray(probs, np.float64)
            shown = scale_temperature(raw, self.temperature)
            for i, pixels in enumerate(chunk):
                crop = prepared[i][1]
                if crop is not None and crop.cropped:  # the map describes the crop: put it back on the film
                    grid, inner, all_zero = postprocess(np.asarray(cams[i]), crop.pixels.shape[:2])
                    heatmap = uncrop(inner, crop)
                else:
                    grid, heatmap, all_zero = postprocess(np.asarray(cams[i]), pixels.shape)
                idx = int(chosen[i])
                pred = Prediction(self.classes, shown[i], raw[i], self.temperature)
                results.append(CamResult(pred, method, self.classes[idx], idx, grid, heatmap, all_zero))
        return results


def postprocess(raw_cam: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, bool]:
    """ReLU, per-image min-max to [0, 1], bilinear upsampling to ``shape``.

    Parameters
    ----------
    raw_cam : (h, w) ndarray
        ``sum_c w_c A_c`` before the ReLU.
    shape : (rows, cols)
        The X-ray's original size.

    Returns
    -------
    grid : (h, w) float32 in [0, 1]
    heatmap : (rows, cols) float32 in [0, 1]; all zeros when the map is constant (it localises nothing)
    all_zero : bool
        True when the positive part is nothing but round-off (peak <= ZERO_TOLERANCE * max |raw|);
        both maps are then zeros.
    """
    raw = np.asarray(raw_cam, np.float32)
    positive = np.maximum(raw, 0)
    magnitude = float(np.max(np.abs(raw))) if raw.size else 0.0
    if not np.isfinite(magnitude):
        raise CamUnavailableError("the map holds NaN or infinite values (the model's activations overflow)")
    if float(positive.max()) <= ZERO_TOLERANCE * magnitude or magnitude == 0.0:
        return np.zeros(raw.shape, np.float32), np.zeros(tuple(shape), np.float32), True
    grid = normalize(positive)  # a constant map becomes zeros: it localises nothing
    # binarize.normalize(upsample(...)), in place on the new array. Not cv2.normalize(NORM_MINMAX): it
    # scales in double and casts, so its minimum can land at -1e-12 and its maximum at 1 - 6e-8, and the
    # overlay (rightly) refuses a map outside [0, 1]. In float32, (x - low) / (high - low) is exactly 0 at
    # the minimum, exactly 1 at the maximum and in between elsewhere (rounding is monotonic).
    heatmap = upsample(grid, shape)
    low = heatmap.min()
    span = heatmap.max() - low
    heatmap -= low
    if span > 0:
        heatmap /= span
    return grid, heatmap, False
