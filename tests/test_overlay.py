"""Overlays: RGB colour order, blends, the Otsu outline, the legend and PNG export."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr_core.overlay import (
    COLORMAPS,
    OverlayError,
    colorize,
    legend_image,
    outline_mask,
    overlay,
    to_png_bytes,
)


def left_hot(h: int = 60, w: int = 100) -> np.ndarray:
    """A CAM that is 1 on the left edge and falls to 0 on the right."""
    return np.tile(np.linspace(1.0, 0.0, w, dtype=np.float32), (h, 1))


@pytest.mark.parametrize("colormap", ["turbo", "jet", "inferno"])
def test_hot_left_renders_red_or_yellow_on_the_left_in_rgb(colormap):
    rgb = colorize(left_hot(), colormap=colormap)
    left, right = rgb[:, :5].reshape(-1, 3).mean(0), rgb[:, -5:].reshape(-1, 3).mean(0)
    assert left[0] > 100 and left[0] > left[2] + 50  # red channel first: hot is red/yellow
    assert right[0] < 100  # cold end is dark or blue, not red
    if colormap != "inferno":
        assert right[2] > right[0]  # turbo/jet cold end is blue (BGR would swap these)


def test_overlay_keeps_rgb_order_and_blends_by_opacity():
    pixels = np.full((60, 100), 0.5, np.float32)
    heat = left_hot()
    blended = overlay(pixels, heat, colormap="jet", opacity=0.5)
    assert blended.shape == (60, 100, 3) and blended.dtype == np.uint8
    assert blended[30, 0, 0] > blended[30, 0, 2] and blended[30, -1, 2] > blended[30, -1, 0]
    expected = np.rint(0.5 * 127.5 + 0.5 * colorize(heat, colormap="jet").astype(np.float32))
    np.testing.assert_array_equal(blended, expected.astype(np.uint8))
    np.testing.assert_array_equal(overlay(pixels, heat, opacity=0.0), np.full((60, 100, 3), 128, np.uint8))
    np.testing.assert_array_equal(overlay(pixels, heat, opacity=1.0, colormap="viridis"),
                                  colorize(heat, colormap="viridis"))


def test_gray_colormap_and_uint8_inputs():
    heat = np.array([[0.0, 0.5, 1.0]])
    assert colorize(heat, colormap="gray").tolist() == [[[0, 0, 0], [128, 128, 128], [255, 255, 255]]]
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[..., 1] = 200
    assert overlay(rgb, heat, opacity=0.0)[0, 0].tolist() == [0, 200, 0]
    assert overlay(np.full((1, 3), 10, np.uint8), heat, opacity=0.0)[0, 0].tolist() == [10, 10, 10]


def test_outline_traces_the_edge_of_the_otsu_region():
    heat = np.zeros((80, 120), np.float32)
    heat[20:50, 30:90] = 1.0
    edge = outline_mask(heat, width=1)
    region = np.zeros_like(edge)
    region[20:50, 30:90] = True
    assert edge[region].sum() == edge.sum() == 2 * (30 + 60) - 4  # one-pixel ring inside the region
    assert edge[20, 40] and edge[35, 30] and not edge[35, 60]
    assert not outline_mask(np.zeros((10, 10))).any()  # constant map: no region, no line
    drawn = overlay(np.zeros((80, 120)), heat, outline=True, outline_color=(0, 255, 0))
    assert drawn[20, 40].tolist() == [0, 255, 0] and drawn[35, 60].tolist() != [0, 255, 0]


def test_legend_runs_low_to_high_left_to_right():
    bar = legend_image(colormap="turbo", width=200, height=12)
    assert bar.shape == (12, 200, 3) and bar.dtype == np.uint8
    np.testing.assert_array_equal(bar[0], colorize(np.linspace(0, 1, 200)[None], colormap="turbo")[0])
    assert bar[5, -1, 0] > 100 and bar[5, 0, 2] > bar[5, 0, 0]
    assert (bar == bar[0]).all()  # every row the same


def test_png_bytes_round_trip_in_rgb_order():
    rgb = colorize(left_hot(20, 30))
    decoded = np.asarray(Image.open(io.BytesIO(to_png_bytes(rgb))).convert("RGB"))
    np.testing.assert_array_equal(decoded, rgb)
    assert to_png_bytes(np.zeros((4, 5), np.uint8)).startswith(b"\x89PNG")


@pytest.mark.parametrize("call,match", [
    (lambda: colorize(np.array([[0.0, np.nan]])), "NaN"),
    (lambda: colorize(np.array([[0.0, 1.5]])), r"\[0, 1\]; got 0\.\.1\.5"),
    (lambda: colorize(np.zeros((2, 2, 3))), r"\(H, W\) array; got shape \(2, 2, 3\)"),
    (lambda: colorize(np.zeros((2, 2)), colormap="rainbow"), "'rainbow' unknown; expected one of turbo"),
    (lambda: overlay(np.zeros((4, 4)), np.zeros((4, 5))), r"heatmap shape \(4, 5\) differs from the image's \(4, 4\)"),
    (lambda: overlay(np.zeros((4, 4)), np.zeros((4, 4)), opacity=1.2), "opacity must lie in"),
    (lambda: overlay(np.full((4, 4), 2.0), np.zeros((4, 4))), r"lie in \[0, 1\]"),
    (lambda: to_png_bytes(np.zeros((4, 4, 3))), "uint8"),
])
def test_bad_input_says_what_was_given(call, match):
    with pytest.raises(OverlayError, match=match):
        call()


def test_every_listed_colormap_renders():
    for name in COLORMAPS:
        assert colorize(np.array([[0.0, 1.0]]), colormap=name).shape == (1, 2, 3)
