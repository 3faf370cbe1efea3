"""What a model's last layer gives, and the registered model that gives class probabilities from it.

Files trained elsewhere end in one of three ways (:data:`~cxr_core.models.zoo.OUTPUT_KINDS`):

- ``"probabilities"``: a softmax (a ``Softmax`` layer, a softmax ``Activation`` or ``Dense``); kept as is.
- ``"logits"``: a linear ``Dense`` with one unit per class; a softmax ``Activation`` is appended, so its
  input, the logits, stays the pre-softmax score Grad-CAM differentiates.
- ``"sigmoid"``: one unit (a ``Dense(1)`` with sigmoid or no activation, or a sigmoid ``Activation``) for a
  two-class problem; it becomes ``Dense(2, softmax)`` with pre-softmax scores ``[0, z]``, which gives
  ``[1 - sigmoid(z), sigmoid(z)]`` exactly. Grad-CAM then explains class 1 by ``z`` and class 0 by ``-z``.

The new layers are stock Keras layers on the file's own graph (no nesting, nothing custom), so the
registered ``.keras`` file loads anywhere and Grad-CAM's replay of nested bases still applies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cxr_core.errors import ModelError
from cxr_core.models.zoo import OUTPUT_KINDS


def output_layer(model):
    """The layer that produces the model's (single) output, and the index of that call's node."""
    history = getattr(model.outputs[0], "_keras_history", None)
    return (history[0], history[1]) if history is not None else (model.layers[-1], 0)


def activation_name(layer) -> str:
    """``"softmax"``, ``"sigmoid"``, ``"linear"``... for a layer with an activation; ``""`` otherwise."""
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return getattr(getattr(layer, "activation", None), "__name__", "")


def detect_outputs(model) -> str | None:
    """The kind of output the model's last layer gives, or None when its type does not say.

    Raises
    ------
    ModelError
        Several sigmoid units (multi-label outputs), which are not class probabilities.
    """
    import keras

    final, _ = output_layer(model)
    units = int(model.output_shape[-1])
    act = activation_name(final)
    if act == "softmax":
        return "probabilities"
    if act == "sigmoid":
        if units != 1:
            raise ModelError(f"its last layer {final.name!r} has {units} sigmoid units (multi-label scores); "
                             "CXR Review needs one probability per class that sum to 1, or one sigmoid unit")
        return "sigmoid"
    if isinstance(final, keras.layers.Dense) and act == "linear":
        return "sigmoid" if units == 1 else "logits"  # a lone linear unit is a sigmoid's logit
    return None


def _free_name(model, name: str) -> str:
    taken = {lyr.name for lyr in model.layers}
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def probability_model(model, outputs: str):
    """``model`` itself for ``"probabilities"``; otherwise a model on its graph that outputs probabilities.

    Raises
    ------
    ModelError
        ``outputs`` is unknown, or ``"sigmoid"`` for a model that does not end in one unit whose logit
        can be read (the message names the last layer).
    """
    import keras

    if outputs not in OUTPUT_KINDS:
        raise ModelError(f"outputs {outputs!r} unknown; expected one of {', '.join(OUTPUT_KINDS)}")
    if outputs == "probabilities":
        return model
    if outputs == "logits":
        probs = keras.layers.Activation("softmax", name=_free_name(model, "probabilities"), dtype="float32")
        return keras.Model(model.inputs, probs(model.outputs[0]), name=model.name)
    final, node = output_layer(model)
    act = activation_name(final)
    if int(model.output_shape[-1]) != 1:
        raise ModelError(f"--outputs sigmoid needs one output unit; the model has {model.output_shape[-1]}")
    if isinstance(final, keras.layers.Dense) and act in ("sigmoid", "linear"):
        kernel = keras.ops.convert_to_numpy(final.kernel).astype(np.float32)
        bias = keras.ops.convert_to_numpy(final.bias).astype(np.float32) if final.bias is not None else np.zeros(1)
    elif isinstance(final, keras.layers.Activation) and act == "sigmoid":
        kernel, bias = np.ones((1, 1), np.float32), np.zeros(1, np.float32)  # its input is the logit itself
    else:
        raise ModelError(
            f"--outputs sigmoid needs a last layer that is a one-unit Dense (sigmoid or no activation) or a sigmoid "
            f"Activation, so the logit can be read; its last layer {final.name!r} is a {type(final).__name__} "
            f"with activation {act or 'none'!r}")
    h = final._inbound_nodes[node].input_tensors[0]
    two = keras.layers.Dense(2, activation="softmax", name=_free_name(model, "two_class"), dtype="float32")
    out = two(h)
    two.set_weights([np.concatenate([np.zeros_like(kernel), kernel], axis=1),
                     np.array([0.0, float(bias[0])], np.float32)])
    return keras.Model(model.inputs, out, name=model.name)


def score_function(final, outputs: str = "probabilities") -> Callable | None:
    """Map the final softmax layer's input to the pre-softmax class scores; None when it is no softmax.

    For ``outputs="sigmoid"`` (pre-softmax ``[0, z]``) the scores are ``[-z, z]``: class 1 is explained by
    the unit's logit, class 0 by its negation.
    """
    import keras

    if activation_name(final) != "softmax":
        return None
    if isinstance(final, keras.layers.Dense):
        def score(h):
            z = keras.ops.matmul(h, keras.ops.cast(final.kernel, h.dtype))
            return z if final.bias is None else z + keras.ops.cast(final.bias, h.dtype)
    elif isinstance(final, (keras.layers.Softmax, keras.layers.Activation)):
        def score(h):
            return h
    else:
        return None
    if outputs != "sigmoid":
        return score

    def log_odds(h):
        s = score(h)
        z = s[:, 1:2] - s[:, 0:1]
        return keras.ops.concatenate([-z, z], axis=-1)

    return log_odds
