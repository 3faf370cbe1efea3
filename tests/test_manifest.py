"""The weights registry: cards, checksums, statuses, loading checks and import of outside models.

Uses tiny hand-made Keras models (a few hundred weights) except for the nested-VGG16 import;
the four zoo architectures round-trip in test_zoo.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cxr_core.errors import ChecksumError, ModelError, ModelNotFoundError
from cxr_core.models.manifest import (
    MISMATCH,
    MISSING,
    READY,
    UNREADABLE,
    ModelCard,
    find_last_conv_layer,
    import_model,
    list_models,
    load_model,
    save_model,
)


def tiny_model(n_classes: int = 3, size: int = 32, *, softmax: bool = True, height: int | None = None):
    """Input -> Conv2D('conv') -> pooling -> Dense('logits') [-> softmax]: loads in a blink."""
    import keras

    inp = keras.Input((height or size, size, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(n_classes, name="logits")(x)
    if softmax:
        x = keras.layers.Activation("softmax", name="probabilities")(x)
    return keras.Model(inp, x, name="tiny")


def card_for(name: str, classes, size: int = 32, **fields) -> ModelCard:
    return ModelCard(name=name, architecture="custom", classes=list(classes), input_size=size,
                     preprocessing="unit", last_conv_layer="conv", **fields)


def inputs(size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (3, size, size, 3)).astype(np.float32)


@pytest.fixture
def registry(tmp_path):
    """A registry with one entry per status: ready, missing file, checksum mismatch, unreadable card."""
    import keras

    keras.utils.set_random_seed(0)
    for name in ("ok", "gone", "tampered"):
        save_model(tiny_model(), card_for(name, ["A", "B", "C"]), tmp_path)
    (tmp_path / "gone" / "model.keras").unlink()
    with (tmp_path / "tampered" / "model.keras").open("ab") as fh:
        fh.write(b"\0")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text("{not json")
    (tmp_path / "not-a-model").mkdir()  # ignored: neither card nor model file
    return tmp_path


# --- cards ---------------------------------------------------------------------------------------


def test_card_round_trips_through_a_dict_keeping_unknown_fields():
    card = card_for("m", ("Normal", "Pneumonia"), metrics={"accuracy": 0.9})
    data = {**card.to_dict(), "trained_by": "someone else"}
    again = ModelCard.from_dict(data)
    assert again.classes == ["Normal", "Pneumonia"] and again.metrics == {"accuracy": 0.9}
    assert again.extra == {"trained_by": "someone else"}
    assert again.to_dict()["trained_by"] == "someone else" and "extra" not in again.to_dict()


def test_crop_lungs_round_trips_and_is_false_in_cards_written_before_it():
    card = card_for("m", ("Normal", "Pneumonia"), crop_lungs=True)
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again.crop_lungs is True and again.spec().crop_lungs is True and "crop_lungs" not in again.extra
    old = {k: v for k, v in card.to_dict().items() if k != "crop_lungs"}  # a card from before issue 16
    assert ModelCard.from_dict(old).spec().crop_lungs is False


def test_card_spec_overrides_the_zoo_and_checks_preprocessing():
    card = ModelCard(name="r", architecture="resnet50", classes=["A", "B"], input_size=64,
                     preprocessing="caffe", last_conv_layer="conv4_block6_out")
    spec = card.spec()
    assert (spec.arch, spec.input_size, spec.last_conv_layer) == ("resnet50", 64, "conv4_block6_out")
    assert spec.keras_name == "ResNet50"
    card.preprocessing = "zscore"
    with pytest.raises(ModelError, match=r"card of r has preprocessing 'zscore'; expected one of"):
        card.spec()


# --- save, list, load ----------------------------------------------------------------------------


def test_save_writes_checksum_and_load_gives_identical_probabilities(tmp_path):
    model = tiny_model()
    entry = save_model(model, card_for("mine", ["A", "B", "C"]), tmp_path)
    assert entry.status == READY and entry.ready
    model_file = tmp_path / "mine" / "model.keras"
    card = json.loads((tmp_path / "mine" / "card.json").read_text())
    assert card["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert card["format_version"] == 1 and "not diagnoses" in card["intended_use"]
    loaded = load_model("mine", tmp_path)
    np.testing.assert_allclose(np.asarray(loaded.model(inputs())), np.asarray(model(inputs())), atol=1e-6)
    assert loaded.name == "mine" and loaded.card.classes == ["A", "B", "C"]


def test_list_models_reports_each_status_without_loading_models(registry, monkeypatch):
    import keras

    def no_loading(*args, **kwargs):
        raise AssertionError("list_models loaded a model")

    monkeypatch.setattr(keras.models, "load_model", no_loading)
    entries = {e.name: e for e in list_models(registry)}
    assert {name: e.status for name, e in entries.items()} == {
        "ok": READY, "gone": MISSING, "tampered": MISMATCH, "broken": UNREADABLE,
    }
    assert entries["gone"].message.endswith("gone/model.keras is missing")
    assert "does not match the SHA-256 in its card" in entries["tampered"].message
    assert "broken/card.json is unreadable" in entries["broken"].message and entries["broken"].card is None


@pytest.mark.parametrize(("text", "reason"), [
    ("[]", "expected a JSON object, got list"),
    ("null", "expected a JSON object, got NoneType"),
    ('{"name": "half"}', "missing 5 required positional arguments"),
])
def test_cards_that_parse_but_are_not_cards_are_unreadable(tmp_path, text, reason):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "card.json").write_text(text)
    [entry] = list_models(tmp_path)
    assert entry.status == UNREADABLE and reason in entry.message


def test_demo_models_are_listed_first(tmp_path):
    save_model(tiny_model(), card_for("aaa", ["A", "B", "C"]), tmp_path)
    save_model(tiny_model(), card_for("zzz-demo", ["A", "B", "C"], demo=True), tmp_path)
    assert [e.name for e in list_models(tmp_path)] == ["zzz-demo", "aaa"]


def test_weights_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "elsewhere"))
    assert list_models() == []
    save_model(tiny_model(), card_for("env", ["A", "B", "C"]))
    assert (tmp_path / "elsewhere" / "env" / "model.keras").is_file()
    assert [e.name for e in list_models()] == ["env"]


def test_load_refuses_each_unusable_entry(registry):
    with pytest.raises(ModelNotFoundError, match=r"model 'gone': .*gone/model.keras is missing"):
        load_model("gone", registry)
    with pytest.raises(ChecksumError, match=r"model 'tampered': .*does not match the SHA-256 .*re-register it"):
        load_model("tampered", registry)
    with pytest.raises(ModelError, match=r"model 'broken': model card .*card.json is unreadable"):
        load_model("broken", registry)
    expected = r"no registered model named 'ghost' in .*\(registered: broken, gone, ok, tampered\)"
    with pytest.raises(ModelNotFoundError, match=expected):
        load_model("ghost", registry)


def test_load_refuses_a_model_whose_outputs_differ_from_its_card(tmp_path):
    save_model(tiny_model(4), card_for("liar", ["A", "B", "C"]), tmp_path)
    expected = r"model 'liar' outputs shape \(None, 4\), but its card lists 3 classes \(A, B, C\)"
    with pytest.raises(ModelError, match=expected):
        load_model("liar", tmp_path)


def test_tiny_registry_holds_a_4_class_and_a_3_class_model(tiny_registry):
    entries = {e.name: e for e in list_models(tiny_registry)}
    assert all(e.status == READY for e in entries.values())
    assert len(entries["tiny-effnet"].card.classes) == 4
    assert entries["tiny-resnet-3class"].card.classes == ["COVID-19", "Normal", "Pneumonia"]


# --- Grad-CAM layer detection ---------------------------------------------------------------------


def test_find_last_conv_layer_finds_the_last_feature_map():
    assert find_last_conv_layer(tiny_model()) == "conv"


def test_find_last_conv_layer_refuses_a_model_without_feature_maps():
    import keras

    inp = keras.Input((8,))
    flat = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(inp), name="flat")
    with pytest.raises(ModelError, match=r"model 'flat' has no layer with a 4-D \(feature map\) output"):
        find_last_conv_layer(flat)


# --- import-model --------------------------------------------------------------------------------


def nested_model(base, n_classes: int = 3):
    """The usual fine-tuning shape: a whole base model used as one layer, then a small head."""
    import keras

    inp = keras.Input(base.input_shape[1:])
    x = base(inp, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, keras.layers.Dense(n_classes, activation="softmax", name="head")(x))


def test_import_nested_zoo_base_detects_the_base_layer(tmp_path):
    import keras

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    model = nested_model(base)
    model.save(tmp_path / "outside.keras")
    loaded = import_model(tmp_path / "outside.keras", "nested-vgg", "vgg16", ["COVID-19", "Normal", "Pneumonia"],
                          weights_dir=tmp_path / "weights")
    card = loaded.card
    assert (card.architecture, card.base_name, card.last_conv_layer) == ("vgg16", "vgg16", "block5_conv3")
    assert (card.input_size, card.preprocessing, len(card.classes)) == (32, "caffe", 3)
    assert [e.status for e in list_models(tmp_path / "weights")] == [READY]
    x = np.random.default_rng(0).uniform(-100, 100, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded.model(x)), np.asarray(model(x)), atol=1e-6)


def test_import_custom_nested_model_finds_the_last_feature_map_inside_the_base(tmp_path):
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_a")(inp)
    x = keras.layers.Conv2D(4, 3, name="conv_b")(x)
    nested_model(keras.Model(inp, x, name="backbone"), n_classes=2).save(tmp_path / "custom.keras")
    loaded = import_model(
        tmp_path / "custom.keras", "binary", "custom", ["Normal", "Pneumonia"], weights_dir=tmp_path / "w"
    )
    card = loaded.card
    assert (card.architecture, card.base_name, card.last_conv_layer) == ("custom", "backbone", "conv_b")
    assert card.preprocessing == "unit"
    assert loaded.spec.input_size == 32


def test_import_refuses_wrong_class_count_and_leaves_no_entry(tmp_path):
    tiny_model(3).save(tmp_path / "three.keras")
    with pytest.raises(ModelError, match=r"outputs shape \(None, 3\), but its card lists 4 classes"):
        import_model(tmp_path / "three.keras", "bad", "custom", ["A", "B", "C", "D"], weights_dir=tmp_path / "w")
    assert not (tmp_path / "w" / "bad").exists()


def test_import_refuses_outputs_that_are_not_probabilities(tmp_path):
    # a linear last Dense is detected as logits (tests/test_import_outputs.py); told otherwise, import checks
    tiny_model(3, softmax=False).save(tmp_path / "logits.keras")
    with pytest.raises(ModelError, match=r"model output sums to .*, not 1: it must end in a softmax"):
        import_model(tmp_path / "logits.keras", "raw", "custom", ["A", "B", "C"], outputs="probabilities",
                     weights_dir=tmp_path / "w")
    assert not (tmp_path / "w" / "raw").exists()


def test_import_refuses_non_square_input_missing_file_and_unknown_layer(tmp_path):
    tiny_model(3, size=32, height=48).save(tmp_path / "wide.keras")
    with pytest.raises(ModelError, match=r"input shape is \(None, 48, 32, 3\); CXR Review needs a square 3-channel"):
        import_model(tmp_path / "wide.keras", "wide", "custom", ["A", "B", "C"], weights_dir=tmp_path / "w")
    with pytest.raises(ModelNotFoundError, match=r"model file .*absent\.keras does not exist"):
        import_model(tmp_path / "absent.keras", "absent", "custom", ["A", "B"], weights_dir=tmp_path / "w")
    tiny_model(3).save(tmp_path / "ok.keras")
    with pytest.raises(ModelError, match=r"model has no layer named 'block5_conv3' \(for --last-conv-layer\)"):
        import_model(tmp_path / "ok.keras", "ok", "custom", ["A", "B", "C"], last_conv_layer="block5_conv3",
                     weights_dir=tmp_path / "w")


@pytest.mark.parametrize("name", ["../x", "..", "a/b", "/etc", ".hidden", "x/../../y", "", "a\\b"])
def test_a_model_name_cannot_reach_outside_the_weights_folder(name, tmp_path):
    from cxr_core.errors import ModelError
    from cxr_core.models.manifest import load_model

    (tmp_path / "x").mkdir()  # a folder a traversal would find
    with pytest.raises(ModelError, match="not allowed"):
        load_model(name, weights_dir=tmp_path / "w")


def test_model_folder_is_the_registry_folder_of_a_checked_name(tmp_path, monkeypatch):
    from cxr_core.models.manifest import model_folder, registry_dir

    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path))
    assert registry_dir() == tmp_path and registry_dir(tmp_path / "other") == tmp_path / "other"
    assert model_folder("demo") == tmp_path / "demo" and model_folder("demo", "/x") == Path("/x/demo")
    with pytest.raises(ModelError, match="not allowed"):
        model_folder("../outside")
