"""Registering an uploaded .keras file: the import-model checks, and a refusal registers nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_core.errors import ModelError
from cxr_core.models.manifest import list_models
from cxr_core.models.upload import import_uploaded

SIDE = 32


def tiny_cnn(n_classes: int = 3, activation: str = "softmax"):
    """A two-convolution classifier with random weights: a 'custom' architecture of a few kilobytes."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_last")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation=activation, name="scores")(x))


@pytest.fixture(scope="session")
def tiny_keras(tmp_path_factory) -> Path:
    """A saved tiny .keras file (3 classes, softmax)."""
    path = tmp_path_factory.mktemp("upload") / "tiny-upload.keras"
    tiny_cnn().save(path)
    return path


@pytest.fixture(scope="session")
def tiny_logits_keras(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "tiny-logits.keras"
    tiny_cnn(activation=None).save(path)
    return path


def test_an_uploaded_custom_model_is_registered_with_its_card(tiny_keras, tmp_path):
    loaded = import_uploaded(tiny_keras.read_bytes(), "tiny-upload.keras", "uploaded-cnn", "custom",
                             ["COVID-19", "Normal", "Pneumonia"], weights_dir=tmp_path)
    card = loaded.card
    assert (card.architecture, card.classes, card.input_size) == ("custom", ["COVID-19", "Normal", "Pneumonia"], SIDE)
    assert card.last_conv_layer == "conv_last" and card.outputs == "probabilities"
    assert [e.name for e in list_models(tmp_path) if e.ready] == ["uploaded-cnn"]
    with pytest.raises(ModelError, match="already registered"):
        import_uploaded(tiny_keras.read_bytes(), "tiny-upload.keras", "uploaded-cnn", "custom",
                        ["COVID-19", "Normal", "Pneumonia"], weights_dir=tmp_path)


def test_logits_are_detected_and_recorded(tiny_logits_keras, tmp_path):
    card = import_uploaded(tiny_logits_keras.read_bytes(), "tiny-logits.keras", "logit-cnn", "custom",
                           ["A", "B", "C"], last_conv_layer="conv_a", weights_dir=tmp_path).card
    assert card.outputs == "logits" and card.last_conv_layer == "conv_a"
    assert any("tiny-logits.keras" in n for n in card.notes)


@pytest.mark.parametrize("change, message", [
    (dict(filename="model.h5"), "not a .keras file"),
    (dict(data=b""), "empty"),
    (dict(data=b"not a zip at all"), "could not load"),
    (dict(classes=["COVID-19", "Normal"]), "outputs shape"),
    (dict(classes=["A", "A", "B"]), "differ"),
    (dict(name="../escape"), "not allowed"),
    (dict(last_conv_layer="no_such_layer"), "no layer named"),
])
def test_a_refused_upload_registers_nothing(tiny_keras, tmp_path, change, message):
    args = dict(data=tiny_keras.read_bytes(), filename="tiny-upload.keras", name="refused", arch="custom",
                classes=["COVID-19", "Normal", "Pneumonia"])
    args.update(change)
    last = args.pop("last_conv_layer", None)
    with pytest.raises(ModelError, match=message):
        import_uploaded(args.pop("data"), args.pop("filename"), args.pop("name"), args.pop("arch"),
                        args.pop("classes"), last_conv_layer=last, weights_dir=tmp_path)
    assert list_models(tmp_path) == [] and not (tmp_path / "refused").exists()
