"""Heatmap to mask: thresholds, bilinear upsampling, normalisation, Otsu, top-k and contour filling."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from cxr_core.explain.binarize import (
    HeatmapError,
    Threshold,
    ThresholdError,
    binarize,
    fill_contours,
    normalize,
    otsu_threshold,
    upsample,
)
from cxr_core.errors import CXRError


@pytest.mark.parametrize("text, method, value, canonical", [
    ("otsu", "otsu", None, "otsu"),
    (" OTSU ", "otsu", None, "otsu"),
    ("0.5", "threshold", 0.5, "0.5"),
    ("0", "threshold", 0.0, "0"),
    ("1", "threshold", 1.0, "1"),
    ("0.1234567", "threshold", 0.1234567, "0.1234567"),
    ("top15%", "top", 15.0, "top15%"),
    ("top 2.5 %", "top", 2.5, "top2.5%"),
    ("TOP100", "top", 100.0, "top100%"),
])
def test_threshold_parses_and_prints_back(text, method, value, canonical):
    t = Threshold.parse(text)
    assert (t.method, t.value) == (method, value)
    assert str(t) == canonical
    assert Threshold.parse(str(t)) == t


@pytest.mark.parametrize("text, match", [
    ("otsu2", "not understood.*accepted"),
    ("", "not understood"),
    ("1.5", r"\[0, 1\].*1.5"),
    ("-0.1", r"\[0, 1\]"),
    ("top0%", r"\(0, 100\]"),
    ("top150%", r"\(0, 100\]"),
    ("nan", "finite"),
])
def test_threshold_rejects_bad_specs_naming_them(text, match):
    with pytest.raises(ThresholdError, match=match) as info:
        Threshold.parse(text)
    assert isinstance(info.value, CXRError)


def test_threshold_rejects_value_for_otsu_and_unknown_method():
    with pytest.raises(ThresholdError, match="takes no value"):
        Threshold("otsu", 0.3)
    with pytest.raises(ThresholdError, match="unknown.*otsu, threshold, top"):
        Threshold("mean")


def test_upsample_is_pixel_centre_bilinear():
    # Source f(r, c) = c + 2r. align_corners=False maps output x to source (x + 0.5) / 2 - 0.5,
    # i.e. -0.25, 0.25, 0.75, 1.25, clamped at the border: weights on the second pixel 0, .25, .75, 1.
    src = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    w = np.array([0.0, 0.25, 0.75, 1.0])
    expected = w[None, :] + 2 * w[:, None]
    out = upsample(src, (4, 4))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # rows and cols in that order: a (2, 2) map to 3 rows x 5 cols
    assert upsample(src, (3, 5)).shape == (3, 5)


def test_upsample_stack_equals_each_map_alone_and_leaves_input():
    rng = np.random.default_rng(0)
    stack = rng.random((5, 7, 7))
    before = stack.copy()
    out = upsample(stack, (40, 33))
    assert out.shape == (5, 40, 33)
    for i in range(5):
        np.testing.assert_array_equal(out[i], upsample(stack[i], (40, 33)))
    np.testing.assert_array_equal(stack, before)


def test_normalize_scales_each_map_and_maps_constant_to_zero():
    stack = np.stack([np.array([[2.0, 4.0], [6.0, 10.0]]), np.full((2, 2), 7.0)])
    out = normalize(stack)
    np.testing.assert_allclose(out[0], [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(out[1], 0.0)
    assert not np.isnan(out).any()
    assert stack[0, 0, 0] == 2.0  # input untouched


@pytest.mark.parametrize("bad, match", [
    (np.zeros(5), "shape"),
    (np.zeros((2, 2, 2, 2)), "shape"),
    (np.array([[0.0, np.nan]]), "NaN"),
    (np.array([[0.0, np.inf]]), "infinite"),
    (np.zeros((3, 3), bool), "real numbers"),
])
def test_bad_heatmaps_raise_heatmap_error(bad, match):
    with pytest.raises(HeatmapError, match=match):
        binarize(bad)


def _plain_otsu_level(u8: np.ndarray) -> int:
    """Otsu written out: the level t maximising between-class variance of {<= t} and {> t}."""
    hist = np.bincount(u8.ravel(), minlength=256).astype(float)
    p = hist / hist.sum()
    best, level = -1.0, 0
    for t in range(256):
        w0, w1 = p[: t + 1].sum(), p[t + 1:].sum()
        if w0 == 0 or w1 == 0:
            continue
        mu0 = (np.arange(t + 1) * p[: t + 1]).sum() / w0
        mu1 = (np.arange(t + 1, 256) * p[t + 1:]).sum() / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
        if between > best + 1e-12:
            best, level = between, t
    return level


def test_otsu_on_bimodal_map_splits_the_modes_like_opencv():
    rng = np.random.default_rng(1)
    h = np.where(np.arange(60)[None, :] < 25, 0.2, 0.8) + rng.normal(0, 0.04, (50, 60))
    u8 = np.uint8(255 * ((h - h.min()) / (h.max() - h.min())).astype(np.float32))
    level = otsu_threshold(h) * 255
    assert level == cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[0]
    assert level == _plain_otsu_level(u8)
    mask = binarize(h, fill=False)
    np.testing.assert_array_equal(mask, u8 > level)
    assert mask[:, 25:].all() and not mask[:, :25].any()  # exactly the high mode


def test_fixed_threshold_is_strictly_greater_on_normalised_map():
    h = np.array([[10.0, 20.0, 30.0], [15.0, 25.0, 30.0]])  # normalised: 0, .5, 1, .25, .75, 1
    np.testing.assert_array_equal(binarize(h, method="threshold", value=0.5, fill=False),
                                  [[False, False, True], [False, True, True]])
    assert not binarize(h, method="threshold", value=1.0).any()


def test_top_percent_selects_exact_count_of_highest_pixels():
    rng = np.random.default_rng(2)
    h = rng.random((20, 20))
    mask = binarize(h, method="top", value=15, fill=False)
    assert mask.sum() == 60  # 15% of 400
    assert h[mask].min() > h[~mask].max()


def test_top_percent_breaks_ties_in_row_major_order():
    h = np.zeros((4, 5))
    h[0, 0] = 1.0
    h[1:3, :] = 0.5  # a plateau of 10 tied pixels; 25% of 20 = 5 pixels: the peak plus 4 of the plateau
    mask = binarize(h, method="top", value=25, fill=False)
    expected = np.zeros((4, 5), bool)
    expected[0, 0] = True
    expected[1, :4] = True
    np.testing.assert_array_equal(mask, expected)


def test_constant_map_is_empty_for_every_method():
    flat = np.full((8, 9), 0.4)
    for method, value in (("otsu", None), ("threshold", 0.0), ("top", 50)):
        assert not binarize(flat, method=method, value=value).any()


def test_fill_fills_holes_keeps_lines_and_drops_isolated_pixels():
    m = np.zeros((12, 12), bool)
    m[1:6, 1:6] = True
    m[3, 3] = False            # a hole: filled
    m[9, 9] = True             # an isolated pixel: dropped, as CheXlocalize skips 1-point contours
    m[8, 2:5] = True           # a 1-pixel-thick line: kept
    out = fill_contours(m)
    expected = m.copy()
    expected[3, 3] = True
    expected[9, 9] = False
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == bool


def _polygon_fill(binary: np.ndarray) -> np.ndarray:
    """CheXlocalize's fill: RETR_TREE contours, each with >1 point drawn as a filled PIL polygon."""
    contours = cv2.findContours(binary.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    canvas = Image.new("1", (binary.shape[1], binary.shape[0]))
    for c in contours:
        if len(c) > 1:
            ImageDraw.Draw(canvas).polygon([tuple(int(v) for v in p[0]) for p in c], outline=1, fill=1)
    return np.array(canvas, dtype=bool)


def test_fill_equals_polygon_by_polygon_fill_on_random_masks():
    rng = np.random.default_rng(3)
    for trial in range(40):
        rows, cols = rng.integers(15, 80, 2)
        if trial % 2:
            binary = rng.random((rows, cols)) > 0.6  # noise: many components, holes, single pixels
        else:
            small = rng.random(tuple(rng.integers(3, 12, 2)))
            binary = upsample(small, (rows, cols)) > 0.5
        np.testing.assert_array_equal(fill_contours(binary), _polygon_fill(binary))


def test_binarize_stack_equals_each_map_alone():
    rng = np.random.default_rng(4)
    stack = upsample(rng.random((4, 6, 6)), (30, 40))
    for method, value in (("otsu", None), ("threshold", 0.6), ("top", 10)):
        out = binarize(stack, method=method, value=value)
        assert out.shape == stack.shape
        for i in range(4):
            np.testing.assert_array_equal(out[i], binarize(stack[i], method=method, value=value))
