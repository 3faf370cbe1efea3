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


# --- the models page: an administrator uploads; other roles see no upload form ------------------------


def open_models(role: str):
    from streamlit.testing.v1 import AppTest

    from auth_helpers import login
    from conftest import REPO

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    login(at, name=f"{role} user", role=role)
    at.run()
    at.switch_page("pages/models.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def upload(at, data: bytes, name: str, classes: str, arch: str = "custom"):
    at.file_uploader(key="models_upload_file").set_value([("tiny-upload.keras", data, "application/octet-stream")])
    at.text_input(key="models_upload_name").input(name)
    at.selectbox(key="models_upload_arch").select(arch)
    at.text_input(key="models_upload_classes").input(classes)
    next(b for b in at.button if b.label == "Check and register").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_an_administrator_registers_an_uploaded_model_on_the_models_page(tiny_keras, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path))
    at = open_models("admin")
    upload(at, tiny_keras.read_bytes(), "site-a", "COVID-19, Normal")  # 3 outputs, 2 classes: refused
    assert "Not registered" in at.error[0].value and "outputs shape" in at.error[0].value
    assert list_models(tmp_path) == []
    upload(at, tiny_keras.read_bytes(), "site-a", "COVID-19, Normal, Pneumonia")
    assert at.success[0].value.startswith("Registered site-a: custom, 3 classes (COVID\\-19, Normal, Pneumonia)")
    assert [e.name for e in list_models(tmp_path) if e.ready] == ["site-a"]
    assert any(s.value == "site-a" for s in at.subheader)  # listed at once, with its checked file
    assert any(s.value.startswith("Checksum verified") for s in at.success)
    from cxr_core import auth, storage
    from cxr_core.config import get_settings

    with storage.read_transaction(storage.session_factory(storage.make_engine(get_settings().database_url))) as s:
        changes = auth.events(s, action="model_change")
    assert [(e.who, e.detail.split(" (")[0]) for e in changes] == [("admin user", "registered site-a")]  # refusal: none


@pytest.mark.parametrize("role", ["reviewer", "sme", "researcher"])
def test_other_roles_get_no_upload_form(role, tmp_path, monkeypatch):
    from cxr_core import auth

    assert not auth.can(role, "model:register")
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path))
    at = open_models(role)
    assert at.title[0].value == "Models"
    assert not [b for b in at.button if b.label == "Check and register"]
    assert not [e for e in at.expander if "Add a model" in e.label]
