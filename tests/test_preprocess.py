"""Grayscale to RGB, resizing and per-architecture scaling against keras.applications."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.errors import ModelError
from cxr_core.models.preprocess import prepare, prepare_batch, resize, scale, to_rgb
from cxr_core.models.zoo import get_spec

from conftest import smooth_image


def keras_preprocess(arch: str):
    """The ``preprocess_input`` keras.applications pairs with ``arch``."""
    from keras import applications

    module = {
        "resnet50": applications.resnet50,
        "vgg16": applications.vgg16,
        "xception": applications.xception,
        "efficientnetv2b0": applications.efficientnet_v2,
    }[arch]
    return lambda x: np.asarray(module.preprocess_input(np.array(x, dtype=np.float32, copy=True)))


def test_to_rgb_repeats_gray_into_three_identical_channels():
    gray = smooth_image(5, 7)
    rgb = to_rgb(gray)
    assert rgb.shape == (5, 7, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_to_rgb_refuses_a_colour_array():
    with pytest.raises(ValueError, match=r"expected a 2-D grayscale array, got shape \(4, 4, 3\)"):
        to_rgb(np.zeros((4, 4, 3)))


def test_resize_shrinks_by_area_averaging():
    stripes = np.tile(np.float32([0, 0, 1]), (96, 32))  # 96 x 96, every third column white
    small = resize(stripes, 32)
    assert small.shape == (32, 32)
    np.testing.assert_allclose(small, 1 / 3, atol=1e-6)  # point sampling would give 0 or 1


def test_resize_enlarges_to_a_square_keeping_range():
    image = smooth_image(40, 60)
    big = resize(image, 96)
    assert big.shape == (96, 96)
    assert image.min() - 1e-6 <= big.min() and big.max() <= image.max() + 1e-6


@pytest.mark.parametrize(
    ("mode", "arch"), [("caffe", "resnet50"), ("caffe", "vgg16"), ("tf", "xception"), ("raw", "efficientnetv2b0")]
)
def test_scale_matches_keras_on_colour_input(mode, arch):
    rgb = np.random.default_rng(0).uniform(0, 255, (4, 5, 3)).astype(np.float32)  # channels differ: BGR order shows
    np.testing.assert_allclose(scale(rgb, mode), keras_preprocess(arch)(rgb), atol=1e-4)


def test_scale_unit_and_unknown_mode():
    rgb = np.full((2, 2, 3), 51.0, np.float32)
    np.testing.assert_allclose(scale(rgb, "unit"), 0.2)
    with pytest.raises(ModelError, match=r"unknown preprocessing mode 'bogus'; expected caffe, tf, raw or unit"):
        scale(rgb, "bogus")


@pytest.mark.parametrize("arch", ["resnet50", "vgg16", "xception", "efficientnetv2b0"])
def test_prepare_matches_keras_preprocess_input(arch):
    spec = get_spec(arch).with_overrides(input_size=64)
    pixels = smooth_image(64, 64, seed=1)  # already at input size: resizing is the identity
    prepared = prepare(pixels, spec)
    assert prepared.shape == (64, 64, 3) and prepared.dtype == np.float32 and prepared.flags.c_contiguous
    np.testing.assert_allclose(prepared, keras_preprocess(arch)(to_rgb(pixels) * 255.0), atol=1e-4)


def test_efficientnet_gets_raw_0_to_255():
    spec = get_spec("efficientnetv2b0").with_overrides(input_size=64)
    pixels = smooth_image(64, 64)
    prepared = prepare(pixels, spec)
    np.testing.assert_allclose(prepared[..., 0], pixels * 255.0, rtol=1e-6)
    assert prepared.max() > 200 and prepared.min() >= 0


def test_prepare_resizes_to_the_spec_input():
    prepared = prepare(smooth_image(100, 80), get_spec("xception"))
    assert prepared.shape == (299, 299, 3)
    assert -1.0 <= prepared.min() and prepared.max() <= 1.0


def test_prepare_batch_stacks_prepare_and_handles_no_images():
    spec = get_spec("vgg16").with_overrides(input_size=64)
    images = [smooth_image(70, 90, seed=s) for s in range(3)]
    batch = prepare_batch(images, spec)
    assert batch.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(batch[2], prepare(images[2], spec))
    assert prepare_batch([], spec).shape == (0, 64, 64, 3)


def test_spec_with_mask_markers_removes_a_burned_in_marker_before_the_network():
    """A model trained with --mask-markers is run with the same step, from its spec alone."""
    import cv2

    from cxr_core.models.zoo import get_spec

    film8 = np.full((256, 256), 90, np.uint8)
    cv2.putText(film8, "R", (200, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 255, 4)  # bright side marker, top right
    film = film8.astype(np.float32) / 255.0
    plain = get_spec("efficientnetv2b0").with_overrides(input_size=64)
    masked = plain.with_overrides(mask_markers=True)
    corner_plain = prepare(film, plain)[4:14, 48:60].mean()
    corner_masked = prepare(film, masked)[4:14, 48:60].mean()
    assert corner_plain > 90 + 20  # background is 90: the marker is visible without the step
    assert corner_masked < corner_plain - 40  # and gone (inpainted or blacked out) with it


def test_card_records_mask_markers_and_its_spec_applies_it():
    from cxr_core.models.manifest import ModelCard

    card = ModelCard.from_dict({
        "name": "m", "architecture": "resnet50", "classes": ["A", "B"], "input_size": 64,
        "preprocessing": "caffe", "last_conv_layer": "conv5_block3_out", "mask_markers": True,
    })
    assert card.spec().mask_markers is True
    assert ModelCard.from_dict({**card.to_dict(), "mask_markers": False}).spec().mask_markers is False
