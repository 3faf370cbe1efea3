"""The four architectures: specs, flat builds, Grad-CAM layer, heads, frozen layers, weights errors.

Each architecture is built once (``weights=None``, 64 px; Xception 71 px, its minimum) and also
round-trips through the registry here, so no other test file builds it again.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from cxr_core.errors import CXRError, ModelError, WeightsUnavailableError
from cxr_core.models.manifest import READY, ModelCard, load_model, save_model
from cxr_core.models.zoo import (
    ALL_LAYERS,
    DEFAULT_CLASSES,
    SPECS,
    HeadSpec,
    build_model,
    canonical_class,
    get_spec,
    trainable_layers,
)

from conftest import smooth_image

SIZES = {"resnet50": 64, "vgg16": 64, "xception": 71, "efficientnetv2b0": 64}


@pytest.fixture(scope="module", params=list(SIZES))
def built(request):
    """(arch, model): each architecture built once for this module, then dropped."""
    import keras

    keras.utils.set_random_seed(1)
    arch = request.param
    return arch, build_model(arch, DEFAULT_CLASSES, weights=None, input_size=SIZES[arch])


def batch(size: int, n: int = 2) -> np.ndarray:
    """Network-ready input: smooth images as RGB 0..255 (the scale only matters for equality checks)."""
    return np.stack([np.repeat(smooth_image(size, size, seed=s)[..., None], 3, -1) * 255 for s in range(n)])


def base_layers(model):
    """The convolutional base's layers: everything between the input and the head's pooling."""
    layers = model.layers
    return layers[1 : layers.index(model.get_layer("pool"))]


# --- specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "size", "mode", "layer"),
    [
        ("resnet50", 224, "caffe", "conv5_block3_out"),
        ("vgg16", 224, "caffe", "block5_conv3"),
        ("xception", 299, "tf", "block14_sepconv2_act"),
        ("efficientnetv2b0", 224, "raw", "top_activation"),
    ],
)
def test_spec_holds_the_studys_facts(arch, size, mode, layer):
    spec = SPECS[arch]
    assert (spec.input_size, spec.preprocessing, spec.last_conv_layer) == (size, mode, layer)


def test_get_spec_ignores_case_and_dashes_and_names_the_choices():
    assert get_spec("ResNet-50") is SPECS["resnet50"]
    assert get_spec("EfficientNet_V2B0") is SPECS["efficientnetv2b0"]
    with pytest.raises(ModelError, match=r"unknown architecture 'alexnet'; expected one of resnet50, vgg16, xception"):
        get_spec("alexnet")


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("covid", "COVID-19"), ("COVID-19", "COVID-19"), (" NORMAL ", "Normal"),
        ("viral pneumonia", "Pneumonia"), ("TB", "Tuberculosis"),
    ],
)
def test_canonical_class_maps_folder_spellings(label, expected):
    assert canonical_class(label) == expected


def test_canonical_class_refuses_labels_outside_the_classes():
    with pytest.raises(CXRError, match=r"label 'covid' matches none of the classes Normal, Pneumonia"):
        canonical_class("covid", ("Normal", "Pneumonia"))


# --- each architecture, built once ---------------------------------------------------------------


def test_last_conv_layer_is_reachable_for_grad_cam(built):
    import keras

    arch, model = built
    conv = model.get_layer(get_spec(arch).last_conv_layer)
    assert len(conv.output.shape) == 4
    # the Keras 3 nested-model trap raises here; a flat build gives a working two-output model
    grad_model = keras.Model(model.input, [conv.output, model.output])
    feature_map, probs = grad_model(batch(SIZES[arch]), training=False)
    assert feature_map.shape[0] == 2 and feature_map.shape[1] >= 2 and probs.shape == (2, 4)


def test_head_ends_in_logits_then_softmax(built):
    import keras

    arch, model = built
    logits_layer = model.get_layer("logits")
    assert logits_layer.units == len(DEFAULT_CLASSES) and model.output_shape == (None, 4)
    x = batch(SIZES[arch])
    logits = np.asarray(keras.Model(model.input, logits_layer.output)(x, training=False), np.float64)
    probs = np.asarray(model(x, training=False), np.float64)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, softmax / softmax.sum(1, keepdims=True), atol=1e-5)
    head = get_spec(arch).head
    hidden = model.get_layer("hidden_1")
    assert hidden.units == head.hidden_units[0] and hidden.activation.__name__ == head.activation


def test_trainable_layers_follow_the_spec_and_batchnorm_stays_frozen(built):
    import keras

    arch, model = built
    layers = base_layers(model)
    assert get_spec(arch).last_conv_layer in [l.name for l in layers[-10:]]
    assert not [l.name for l in model.layers if isinstance(l, keras.layers.BatchNormalization) and l.trainable]
    trainable = [l.trainable for l in layers]
    n = get_spec(arch).trainable_base_layers
    if n == ALL_LAYERS:  # Xception: every non-BatchNorm layer
        expected = [not isinstance(l, keras.layers.BatchNormalization) for l in layers]
    else:  # ResNet50/VGG16: the last 10 only; EfficientNetV2B0: none
        expected = [
            i >= len(layers) - n and not isinstance(l, keras.layers.BatchNormalization) for i, l in enumerate(layers)
        ]
    assert trainable == expected
    assert all(model.get_layer(name).trainable for name in ("hidden_1", "logits"))
    if arch == "efficientnetv2b0":
        assert not any(trainable)
        assert model.get_layer("dropout_1").rate == 0.4
        assert model.get_layer("hidden_1").kernel_regularizer.l2 == pytest.approx(1e-4)


def test_registry_round_trip_keeps_probabilities(built, tmp_path):
    arch, model = built
    spec = get_spec(arch)
    card = ModelCard(
        name=f"rt-{arch}", architecture=arch, classes=list(DEFAULT_CLASSES), input_size=SIZES[arch],
        preprocessing=spec.preprocessing, last_conv_layer=spec.last_conv_layer,
    )
    entry = save_model(model, card, tmp_path)
    assert entry.status == READY
    model_file = tmp_path / f"rt-{arch}" / "model.keras"
    written = json.loads((tmp_path / f"rt-{arch}" / "card.json").read_text())
    assert written["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    loaded = load_model(f"rt-{arch}", tmp_path)
    x = batch(SIZES[arch])
    np.testing.assert_allclose(np.asarray(loaded.model(x)), np.asarray(model(x)), atol=1e-6)
    assert loaded.spec.input_size == SIZES[arch] and loaded.spec.last_conv_layer == spec.last_conv_layer
    assert len(loaded.model.get_layer(spec.last_conv_layer).output.shape) == 4
    shutil.rmtree(tmp_path / f"rt-{arch}")  # up to 100 MB each; pytest keeps old temp folders


# --- options and refusals ------------------------------------------------------------------------


def test_head_classes_and_trainable_layers_can_be_overridden():
    model = build_model(
        "vgg16", ["Normal", "Pneumonia", "COVID-19"], weights=None, input_size=32,
        head=HeadSpec(pooling="avg", hidden_units=(32, 16), activation="tanh"), trainable_base_layers=0,
    )
    assert model.output_shape == (None, 3)
    assert (model.get_layer("hidden_1").units, model.get_layer("hidden_2").units) == (32, 16)
    assert model.get_layer("hidden_2").activation.__name__ == "tanh"
    assert not any(l.trainable for l in base_layers(model))


def test_local_weights_file_is_loaded_into_the_base(tmp_path):
    import keras

    keras.utils.set_random_seed(7)
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    model = build_model("vgg16", weights=path, input_size=32)
    kernel = model.get_layer("block5_conv3").get_weights()[0]
    np.testing.assert_array_equal(kernel, source.get_layer("block5_conv3").get_weights()[0])


def test_imagenet_without_internet_says_where_to_put_the_file(monkeypatch):
    from keras.src.utils import file_utils

    def offline(fname, origin=None, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    expected = r"download vgg16_weights_tf_dim_ordering_tf_kernels_notop\.h5 .*\.keras/models.*weights=PATH"
    with pytest.raises(WeightsUnavailableError, match=expected):
        build_model("vgg16", weights="imagenet", input_size=32)


def test_missing_weights_path_is_named(tmp_path):
    with pytest.raises(WeightsUnavailableError, match=rf"weights file {tmp_path}/nope\.h5 does not exist"):
        build_model("resnet50", weights=tmp_path / "nope.h5", input_size=64)


def test_input_below_the_architecture_minimum_is_refused():
    with pytest.raises(ModelError, match=r"Xception needs an input of at least 71 px, got 64"):
        build_model("xception", weights=None, input_size=64)


def test_a_single_class_is_refused():
    with pytest.raises(ModelError, match=r"a classifier needs at least 2 classes, got \['Normal'\]"):
        build_model("vgg16", ["Normal"], weights=None, input_size=32)


def test_train_all_layers_has_one_encoding_and_the_old_spellings_are_read_at_the_boundary():
    from cxr_core.errors import ModelError
    from cxr_core.training.train import TrainConfig, trainable_layers_of

    for old in ("all", "ALL", " none ", -1, "-1", ALL_LAYERS):
        assert trainable_layers(old) == ALL_LAYERS
    assert (trainable_layers("10"), trainable_layers(0), trainable_layers(None)) == (10, 0, None)
    for bad in ("-2", "ten", 2.5, True):
        with pytest.raises(ModelError, match="number of the base's last layers .* or 'all'"):
            trainable_layers(bad)
    assert {spec.trainable_base_layers for spec in SPECS.values()} == {10, 0, ALL_LAYERS}
    assert trainable_layers_of(TrainConfig(arch="xception", name="x")) == ALL_LAYERS  # not given: the zoo's
    assert trainable_layers_of(TrainConfig(arch="vgg16", name="v")) == 10
    assert trainable_layers_of(TrainConfig(arch="vgg16", name="v", trainable_layers=ALL_LAYERS)) == ALL_LAYERS
