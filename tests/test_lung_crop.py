"""The --crop-lungs building blocks: the lung box with its margin, the crop, and a heatmap put back on the film."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from cxr_core.errors import DataError
from cxr_core.io.imaging import load_xray
from cxr_core.models.lung_crop import crop_step, crop_to_lungs, lung_box, uncrop
from cxr_core.models.lungs import read_mask

FIX = Path(__file__).parent / "fixtures" / "audit"
FILM = FIX / "hannover_b343e657.png"


def test_the_box_is_the_masks_extent_grown_by_the_margin_and_clipped():
    m = np.zeros((100, 200), bool)
    m[20:80, 30:170] = True
    assert lung_box(m, margin=0.0) == (20, 30, 80, 170)
    assert lung_box(m, margin=0.1) == (14, 16, 86, 184)
    assert lung_box(m, margin=0.5) == (0, 0, 100, 200)  # clipped to the film
    assert lung_box(np.zeros((50, 50), bool)) is None
    with pytest.raises(DataError, match="margin"):
        lung_box(m, margin=-0.1)


def test_a_real_film_is_cut_to_its_expert_lung_fields():
    pixels = load_xray(FILM).pixels
    lungs = read_mask(next(FIX.glob(FILM.stem + "_lungs*.png")), pixels.shape)
    crop = crop_to_lungs(pixels, lungs)
    r0, c0, r1, c1 = crop.box
    assert crop.cropped and crop.pixels.shape == (r1 - r0, c1 - c0)
    assert lungs[r0:r1, c0:c1].sum() == lungs.sum()  # every lung pixel is kept
    assert crop.pixels.size < 0.9 * pixels.size  # and the corners and border are gone
    np.testing.assert_array_equal(crop.pixels, pixels[r0:r1, c0:c1])


def test_an_empty_mask_keeps_the_whole_film_and_says_why():
    pixels = load_xray(FILM).pixels
    crop = crop_to_lungs(pixels, np.zeros(pixels.shape, bool))
    assert not crop.cropped and crop.pixels is pixels and "not cropped" in crop.reason
    with pytest.raises(DataError, match="lung mask is"):
        crop_to_lungs(pixels, np.zeros((10, 10), bool))


def test_uncrop_puts_the_heatmap_back_inside_the_box():
    pixels = np.random.default_rng(0).random((120, 160))
    lungs = np.zeros_like(pixels, bool)
    lungs[30:90, 40:120] = True
    crop = crop_to_lungs(pixels, lungs, margin=0.0)
    full = uncrop(np.ones((7, 7)), crop)
    assert full.shape == pixels.shape and full[30:90, 40:120].min() == 1.0
    assert full.sum() == pytest.approx(60 * 80)  # nothing outside the box


def test_crop_step_with_the_shipped_lung_model_keeps_the_expert_lungs():
    from cxr_core.models.lungs import LungEstimator

    estimator = LungEstimator.load(REPO / "weights" / "lungseg")
    pixels = load_xray(FILM).pixels
    lungs = read_mask(next(FIX.glob(FILM.stem + "_lungs*.png")), pixels.shape)
    cropped = crop_step(estimator)(pixels)
    (est,) = estimator.estimate([pixels])
    r0, c0, r1, c1 = lung_box(est)
    np.testing.assert_array_equal(cropped, pixels[r0:r1, c0:c1])
    assert lungs[r0:r1, c0:c1].sum() >= 0.95 * lungs.sum()  # the estimate's box holds the expert's lungs


# --- crop_lungs wired through the model: preprocessing, both engines, predict (issue 16) --------------

def _tiny_crop_model():
    """A 32-px CNN and its spec with ``crop_lungs`` on (weights seeded, so maps are not flat)."""
    import keras

    from cxr_core.models.zoo import ModelSpec

    keras.utils.set_random_seed(5)
    L = keras.layers
    inp = keras.Input((32, 32, 3))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(x)
    model = keras.Model(inp, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(x)))
    return model, ModelSpec("tiny", "Tiny", "", 32, "unit", "last_conv", crop_lungs=True)


def test_prepare_with_crop_lungs_is_prepare_of_the_estimated_lung_crop():
    from dataclasses import replace

    from cxr_core.models.preprocess import lung_crop_of, prepare, prepare_cropped

    _, spec = _tiny_crop_model()
    pixels = load_xray(FILM).pixels
    x, crop = prepare_cropped(pixels, spec)
    assert crop is not None and crop.cropped and crop.shape == pixels.shape
    assert crop.box == lung_crop_of(pixels).box
    np.testing.assert_array_equal(x, prepare(crop.pixels, replace(spec, crop_lungs=False)))
    assert not np.array_equal(x, prepare(pixels, replace(spec, crop_lungs=False)))  # the crop did change the input
    assert prepare_cropped(pixels, replace(spec, crop_lungs=False))[1] is None


@pytest.mark.parametrize("backend", ["tensorflow", "openvino"])
def test_crop_model_heatmap_is_the_crops_map_put_back_on_the_film(backend):
    """Both engines: scores are those of the cropped film, the map has the film's shape and is zero off the box."""
    from dataclasses import replace

    from cxr_core.explain.cam import CamEngine
    from cxr_core.models.predict import predict_arrays
    from cxr_core.models.preprocess import lung_crop_of

    model, spec = _tiny_crop_model()
    classes = ["a", "b", "c"]
    if backend == "openvino":
        pytest.importorskip("openvino")
        from cxr_core.engines.openvino import OpenVinoCamEngine

        engine, plain = (OpenVinoCamEngine(model, s, classes, precision="float32")
                         for s in (spec, replace(spec, crop_lungs=False)))
    else:
        engine, plain = CamEngine(model, spec, classes), CamEngine(model, replace(spec, crop_lungs=False), classes)
    pixels = load_xray(FILM).pixels
    crop = lung_crop_of(pixels)
    r0, c0, r1, c1 = crop.box
    for method in ("gradcam", "gradcam++"):
        (res,) = engine.run_arrays([pixels], method=method)
        (ref,) = plain.run_arrays([crop.pixels], method=method)
        assert res.heatmap.shape == pixels.shape
        outside = np.ones(pixels.shape, bool)
        outside[r0:r1, c0:c1] = False
        assert res.heatmap[outside].max() == 0.0 and res.heatmap[~outside].max() == pytest.approx(1.0)
        np.testing.assert_allclose(res.heatmap, uncrop(ref.heatmap, crop), atol=1e-4)
        np.testing.assert_allclose(res.prediction.raw_probabilities, ref.prediction.raw_probabilities, atol=1e-4)
    np.testing.assert_allclose(predict_arrays(model, spec, [pixels]), predict_arrays(
        model, replace(spec, crop_lungs=False), [crop.pixels]), atol=1e-6)
