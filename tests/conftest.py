"""Shared fixtures: an isolated data/weights folder per test session and tiny registered models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent
TINY_SIZE = 64  # input side for tiny models: fast on 2 cores, big enough for every base but Xception (71)


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path_factory, monkeypatch):
    """Never touch the repo's weights/ or data/ from a test unless the test asks for it."""
    root = tmp_path_factory.getbasetemp() / "cxr-home"
    monkeypatch.setenv("CXR_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(root / "weights"))
    monkeypatch.delenv("CXR_DATABASE_URL", raising=False)
    # TensorFlow is the reference engine; tests of the OpenVINO engine ask for it themselves (converting the
    # demo model for OpenVINO costs 30-50 s on 2 cores, once per fresh cache folder).
    monkeypatch.setenv("CXR_BACKEND", "tensorflow")


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory) -> Path:
    """A weights folder holding two tiny registered models (4-class EfficientNetV2B0, 3-class ResNet50)."""
    from cxr_core.models.manifest import ModelCard, save_model
    from cxr_core.models.zoo import DEFAULT_CLASSES, build_model, get_spec

    import keras

    root = tmp_path_factory.mktemp("registry")
    keras.utils.set_random_seed(0)
    for name, arch, classes in (
        ("tiny-effnet", "efficientnetv2b0", list(DEFAULT_CLASSES)),
        ("tiny-resnet-3class", "resnet50", ["COVID-19", "Normal", "Pneumonia"]),
    ):
        spec = get_spec(arch)
        model = build_model(arch, classes, weights=None, input_size=TINY_SIZE)
        card = ModelCard(
            name=name, architecture=arch, classes=classes, input_size=TINY_SIZE,
            preprocessing=spec.preprocessing, last_conv_layer=spec.last_conv_layer,
        )
        save_model(model, card, root)
    return root


@pytest.fixture
def use_registry(tiny_registry, monkeypatch) -> Path:
    """Point CXR_WEIGHTS_DIR at the tiny registry for this test."""
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_registry))
    return tiny_registry


@pytest.fixture
def chest_png_bytes() -> bytes:
    """A real chest X-ray (PNG) from the fixtures folder."""
    return (FIXTURES / "cxr" / "covid_hannover_b343e657.png").read_bytes()


def smooth_image(h: int = 128, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth synthetic [0, 1] image for tests that need pixels but not anatomy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    return np.clip(0.5 + 0.3 * np.sin(6 * xx + rng.uniform(0, 3)) * np.cos(4 * yy), 0, 1).astype(np.float32)
