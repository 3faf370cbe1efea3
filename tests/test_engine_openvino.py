"""The OpenVINO engine gives the TensorFlow engine's scores and heatmaps, and says which engine ran.

Equivalence on the shipped demo model with three real films (one per class), on a zoo architecture with
a different head (VGG16: max pooling above the Grad-CAM layer, global max pooling) and on nested models;
batch invariance; the converted-model cache; the ``CXR_BACKEND`` choice and its stated fallbacks; the compile
settings (latency hint, no thread pinning, ``CXR_OPENVINO_THREADS``).
bfloat16 is checked only on a CPU that has it (OpenVINO reports ``BF16``); elsewhere that test is skipped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES, REPO

openvino = pytest.importorskip("openvino")

from cxr_core.config import SettingsError  # noqa: E402
from cxr_core.errors import CXRError  # noqa: E402
from cxr_core.engines import openvino as ov_engine  # noqa: E402
from cxr_core.engines.openvino import EngineCamResult, EngineUnavailableError, OpenVinoCamEngine  # noqa: E402
from cxr_core.engines.select import (  # noqa: E402
    TensorFlowCamEngine, backend_setting, cache_dir, engine_for, engine_for_model, threads_setting,
)
from cxr_core.explain.cam import CamEngine  # noqa: E402
from cxr_core.io.imaging import load_xray  # noqa: E402
from cxr_core.models.zoo import ModelSpec  # noqa: E402

FILMS = ("covid_hannover_b343e657.png", "normal_kermany224_IM-0001-0001.png",
         "pneumonia_kermany224_person100_bacteria_475.png")


def assert_equivalent(ours, reference, *, prob_tol: float, min_corr: float = 0.99) -> None:
    """Same class, probabilities within ``prob_tol``, heatmaps correlated at least ``min_corr``."""
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a.prediction.raw_probabilities, b.prediction.raw_probabilities,
                                   atol=prob_tol, rtol=0)
        np.testing.assert_allclose(a.prediction.probabilities, b.prediction.probabilities, atol=prob_tol, rtol=0)
        assert a.prediction.predicted == b.prediction.predicted
        assert (a.target_index, a.all_zero) == (b.target_index, b.all_zero)
        assert a.heatmap.shape == b.heatmap.shape
        if not b.all_zero:
            assert np.corrcoef(a.heatmap.ravel(), b.heatmap.ravel())[0, 1] >= min_corr


@pytest.fixture(scope="session")
def films():
    return [load_xray(FIXTURES / "cxr" / name) for name in FILMS]


@pytest.fixture(scope="session")
def demo():
    from cxr_core.models.manifest import load_model

    return load_model("demo-efficientnetv2b0", REPO / "weights")


@pytest.fixture(scope="session")
def ov_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ov-cache")


@pytest.fixture(scope="session")
def demo_ov(demo, ov_cache):
    return OpenVinoCamEngine.from_loaded(demo, cache_dir=ov_cache, precision="float32")


@pytest.fixture(scope="session")
def demo_tf(demo):
    return CamEngine.from_loaded(demo)


def tiny_nested(seed: int = 1):
    """A 32-px model whose CNN base is one nested layer (as imported files often are)."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inner = keras.Input((32, 32, 3))
    x = L.Conv2D(8, 3, activation="relu", name="c1")(inner)
    x = L.Conv2D(16, 3, strides=2, activation="relu", name="last_conv")(x)
    base = keras.Model(inner, x, name="tinybase")
    inp = keras.Input((32, 32, 3))
    h = L.GlobalAveragePooling2D()(base(inp))
    return keras.Model(inp, L.Dense(3, activation="softmax")(L.Dense(12, activation="relu")(h)))


def tiny_spec(layer: str = "last_conv") -> ModelSpec:
    return ModelSpec("tiny", "Tiny", "", 32, "unit", layer, base_name="tinybase")


# --- equivalence with the TensorFlow engine -----------------------------------------------------------

def test_demo_model_matches_tensorflow_on_real_films_in_float32(demo_ov, demo_tf, films):
    assert demo_ov.info.precision == "float32" and demo_ov.info.backend == "openvino"
    ours, reference = demo_ov.run(films), demo_tf.run(films)
    assert_equivalent(ours, reference, prob_tol=1e-4)
    assert {r.prediction.predicted for r in reference} != {None}
    for method in ("gradcam++", "random"):
        assert_equivalent(demo_ov.run(films, method=method), demo_tf.run(films, method=method), prob_tol=1e-4)


def test_an_asked_target_and_the_scores_only_path_match(demo_ov, demo_tf, films):
    assert_equivalent(demo_ov.run(films, target="Pneumonia"), demo_tf.run(films, target="Pneumonia"), prob_tol=1e-4)
    from cxr_core.models.predict import predict_arrays

    pixels = [f.pixels for f in films]
    np.testing.assert_allclose(demo_ov.predict_arrays(pixels), predict_arrays(demo_tf.model, demo_tf.spec, pixels),
                               atol=1e-4, rtol=0)


def test_agreement_with_an_expert_mask_is_unchanged(demo_ov, demo_tf, films):
    from cxr_core.agreement import score_image

    for ours, reference, film in zip(demo_ov.run(films), demo_tf.run(films), films):
        rows, cols = film.shape
        mask = np.zeros(film.shape, bool)
        mask[rows // 4: rows * 3 // 4, cols // 8: cols // 2] = True  # a right-lung-sized box
        a, b = score_image(ours.heatmap, mask), score_image(reference.heatmap, mask)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-3), key


def test_float32_results_do_not_depend_on_the_batch(demo_ov, films):
    together = demo_ov.run(films, batch_size=3)
    alone = [demo_ov.run([f], batch_size=1)[0] for f in films]
    for a, b in zip(together, alone):
        assert np.max(np.abs(a.prediction.raw_probabilities - b.prediction.raw_probabilities)) <= 1e-5
        assert np.max(np.abs(a.grid - b.grid)) <= 1e-5


@pytest.mark.skipif(not ov_engine.bf16_supported(), reason="this CPU has no bfloat16 support (OpenVINO: no BF16)")
def test_bfloat16_is_used_where_the_cpu_has_it_and_stays_close(demo, demo_tf, films, ov_cache):
    engine = OpenVinoCamEngine.from_loaded(demo, cache_dir=ov_cache, precision="auto")
    assert engine.info.precision == "bfloat16"
    assert_equivalent(engine.run(films), demo_tf.run(films), prob_tol=1e-2)


def test_results_state_the_engine_and_precision(demo_ov, films):
    result = demo_ov.run(films[:1])[0]
    assert isinstance(result, EngineCamResult)
    record = result.to_dict()
    assert record["engine"]["backend"] == "openvino" and record["engine"]["precision"] == "float32"
    assert record["engine"]["max_abs_diff"] <= 1e-4
    assert record["predicted"] == result.prediction.predicted and record["cam"]["method"] == "gradcam"
    assert demo_ov.info.label == "OpenVINO, float32"


def test_a_zoo_model_with_max_pooling_above_the_cam_layer_matches():
    from cxr_core.models.zoo import DEFAULT_CLASSES, build_model, get_spec
    import keras

    keras.utils.set_random_seed(3)
    model = build_model("vgg16", DEFAULT_CLASSES, weights=None, input_size=32)
    spec = get_spec("vgg16").with_overrides(input_size=32)
    images = [np.random.default_rng(i).uniform(0, 1, (70, 60)).astype(np.float32) for i in range(3)]
    ours = OpenVinoCamEngine(model, spec, DEFAULT_CLASSES, precision="float32", temperature=1.7)
    reference = CamEngine(model, spec, DEFAULT_CLASSES, temperature=1.7)
    for method in ("gradcam", "gradcam++"):
        assert_equivalent(ours.run_arrays(images, method=method), reference.run_arrays(images, method=method),
                          prob_tol=1e-4)


@pytest.mark.parametrize("layer", ["last_conv", "c1"])
def test_nested_models_are_cut_inside_their_base(layer):
    model = tiny_nested()
    images = [np.random.default_rng(i).uniform(0, 1, (40, 50)).astype(np.float32) for i in range(4)]
    ours = OpenVinoCamEngine(model, tiny_spec(layer), ["a", "b", "c"], precision="float32")
    reference = CamEngine(model, tiny_spec(layer), ["a", "b", "c"])
    assert ours.channels == reference.channels
    assert_equivalent(ours.run_arrays(images), reference.run_arrays(images), prob_tol=1e-4)


def test_analysis_takes_the_openvino_engine_in_place_of_tensorflow(demo, demo_ov, demo_tf, films, monkeypatch):
    from cxr_core.analysis import analyse_films

    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(REPO / "weights"))  # the demo's screening detector (read only)
    ours = analyse_films(demo, films, method="gradcam", engine=demo_ov)
    reference = analyse_films(demo, films, method="gradcam", engine=demo_tf)
    assert [a.refused for a in ours] == [b.refused for b in reference]
    assert_equivalent([a.cam for a in ours if a.cam], [b.cam for b in reference if b.cam], prob_tol=1e-4)
    assert all(a.record()["engine"]["backend"] == "openvino" for a in ours if a.cam)


# --- the cache ----------------------------------------------------------------------------------------

def test_a_second_load_reads_the_cache_and_does_not_convert(demo, demo_ov, ov_cache, films, monkeypatch):
    folder = Path(demo_ov.info.cache)
    assert folder.parent == ov_cache / "openvino" and folder.name.startswith(demo.card.sha256)
    xml = folder / "model.xml"
    before = xml.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again despite a cached model")

    monkeypatch.setattr(ov_engine, "convert_body", no_conversion)
    again = OpenVinoCamEngine.from_loaded(demo, cache_dir=ov_cache, precision="float32")
    assert again.converted is False and again.info.cache == str(folder)
    assert xml.stat().st_mtime_ns == before
    assert_equivalent(again.run(films[:1]), demo_ov.run(films[:1]), prob_tol=1e-7, min_corr=0.9999)


def test_a_damaged_cache_entry_is_converted_again(tmp_path):
    model = tiny_nested()
    first = OpenVinoCamEngine(model, tiny_spec(), ["a", "b", "c"], sha256="ab" * 32, cache_dir=tmp_path)
    assert first.converted
    xml = Path(first.info.cache) / "model.xml"
    xml.write_text("not an IR")
    second = OpenVinoCamEngine(model, tiny_spec(), ["a", "b", "c"], sha256="ab" * 32, cache_dir=tmp_path)
    assert second.converted and "not an IR" not in xml.read_text()
    assert sorted(p.name for p in (tmp_path / "openvino").iterdir() if not p.name == "compiled") == [xml.parent.name]


def test_a_cache_that_cannot_be_written_leaves_the_model_uncached_but_working(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    model = tiny_nested()
    engine = OpenVinoCamEngine(model, tiny_spec(), ["a", "b", "c"], sha256="cd" * 32, cache_dir=blocker,
                               precision="float32")
    assert engine.converted and engine.info.cache == ""
    image = [np.random.default_rng(0).uniform(0, 1, (40, 40)).astype(np.float32)]
    assert_equivalent(engine.run_arrays(image), CamEngine(model, tiny_spec(), ["a", "b", "c"]).run_arrays(image),
                      prob_tol=1e-4)


# --- choosing the engine --------------------------------------------------------------------------------

def test_auto_falls_back_to_tensorflow_with_a_reason_when_openvino_cannot_load(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails as if not installed
    monkeypatch.setattr(ov_engine, "_CORE", None)
    model = tiny_nested()
    engine = engine_for_model(model, tiny_spec(), ["a", "b", "c"], backend="auto")
    assert isinstance(engine, TensorFlowCamEngine)
    assert "openvino package could not be loaded" in engine.info.reason
    result = engine.run_arrays([np.full((40, 40), 0.5, np.float32)])[0]
    assert result.to_dict()["engine"]["backend"] == "tensorflow"
    with pytest.raises(EngineUnavailableError, match="openvino package could not be loaded"):
        engine_for_model(model, tiny_spec(), ["a", "b", "c"], backend="openvino")


def test_a_graph_that_cannot_be_cut_at_the_cam_layer_runs_on_tensorflow_and_says_why():
    import keras

    L = keras.layers
    inp = keras.Input((32, 32, 3))
    a = L.Conv2D(8, 3, name="c1")(inp)
    b = L.Conv2D(8, 3, name="last_conv")(a)
    pooled = L.Concatenate()([L.GlobalAveragePooling2D()(a), L.GlobalAveragePooling2D()(b)])  # bypasses the layer
    model = keras.Model(inp, L.Dense(3, activation="softmax")(pooled))
    spec = ModelSpec("t", "T", "", 32, "unit", "last_conv")
    engine = engine_for_model(model, spec, ["a", "b", "c"], backend="auto")
    assert isinstance(engine, TensorFlowCamEngine)
    assert "cannot be cut at layer 'last_conv'" in engine.info.reason
    with pytest.raises(EngineUnavailableError, match="cannot be cut"):
        engine_for_model(model, spec, ["a", "b", "c"], backend="openvino")


def test_backend_setting_and_cache_folder(monkeypatch, tmp_path):
    from cxr_core.models.manifest import LoadedModel, ModelCard

    card = ModelCard(name="tiny", architecture="tiny", classes=["a", "b", "c"], input_size=32, preprocessing="unit",
                     last_conv_layer="last_conv", base_name="tinybase", calibration={"temperature": 2.0})
    loaded = LoadedModel(tiny_nested(), card, card.spec())
    assert backend_setting({}) == "auto" and backend_setting({"CXR_BACKEND": " TensorFlow "}) == "tensorflow"
    with pytest.raises(SettingsError, match="CXR_BACKEND='gpu'; expected one of auto, openvino, tensorflow"):
        backend_setting({"CXR_BACKEND": "gpu"})
    assert cache_dir({}) == Path(os.environ["CXR_DATA_DIR"]) / "cache"
    assert cache_dir({"CXR_CACHE_DIR": str(tmp_path)}) == tmp_path
    monkeypatch.setenv("CXR_BACKEND", "tensorflow")
    engine = engine_for(loaded)
    assert isinstance(engine, TensorFlowCamEngine) and "CXR_BACKEND=tensorflow" in engine.info.reason
    assert engine.temperature == 2.0
    monkeypatch.setenv("CXR_BACKEND", "openvino")
    engine = engine_for(loaded, precision="float32")
    assert isinstance(engine, OpenVinoCamEngine) and engine.temperature == 2.0 and engine.info.cache == ""
    monkeypatch.setenv("CXR_OPENVINO_PRECISION", "half")
    with pytest.raises(SettingsError, match="CXR_OPENVINO_PRECISION='half'"):
        engine_for(loaded)


# --- compile settings -----------------------------------------------------------------------------------

def test_the_engine_compiles_for_latency_without_pinning_and_a_thread_cap_keeps_results(monkeypatch):
    model = tiny_nested()
    images = [np.random.default_rng(i).uniform(0, 1, (40, 50)).astype(np.float32) for i in range(3)]
    default = OpenVinoCamEngine(model, tiny_spec(), ["a", "b", "c"], precision="float32")
    assert default.settings["PERFORMANCE_HINT"] == "LATENCY" and default.settings["ENABLE_CPU_PINNING"] == "False"
    assert default.settings["NUM_STREAMS"] == "1" and default.settings["INFERENCE_PRECISION_HINT"] == "f32"
    one = OpenVinoCamEngine(model, tiny_spec(), ["a", "b", "c"], precision="float32", threads=1)
    assert one.settings["INFERENCE_NUM_THREADS"] == "1" and one.threads == 1
    reference = CamEngine(model, tiny_spec(), ["a", "b", "c"]).run_arrays(images)
    assert_equivalent(one.run_arrays(images), reference, prob_tol=1e-4)
    assert_equivalent(one.run_arrays(images), default.run_arrays(images), prob_tol=1e-5, min_corr=0.9999)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted although the thread count is invalid")

    monkeypatch.setattr(ov_engine, "convert_body", no_conversion)
    with pytest.raises(CXRError, match="threads must be 0"):
        OpenVinoCamEngine(model, tiny_spec(), ["a", "b", "c"], precision="float32", threads=-1)


def test_threads_setting_is_checked_and_reaches_the_engine(monkeypatch):
    assert threads_setting({}) == 0 and threads_setting({"CXR_OPENVINO_THREADS": " 2 "}) == 2
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(SettingsError, match="CXR_OPENVINO_THREADS="):
            threads_setting({"CXR_OPENVINO_THREADS": bad})
    monkeypatch.setenv("CXR_OPENVINO_THREADS", "1")
    engine = engine_for_model(tiny_nested(), tiny_spec(), ["a", "b", "c"], backend="openvino", precision="float32")
    assert engine.settings["INFERENCE_NUM_THREADS"] == "1"
    engine = engine_for_model(tiny_nested(), tiny_spec(), ["a", "b", "c"], backend="openvino", precision="float32",
                              threads=0)
    assert engine.threads == 0 and int(engine.settings["INFERENCE_NUM_THREADS"]) >= 1
