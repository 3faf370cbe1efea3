"""Overlays: RGB colour order, faded blends, the Otsu outline, zoom, the legend band and PNG export."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr_core.explain.overlay import (
    COLORMAPS,
    FADE_LOW,
    OverlayError,
    colorize,
    fade_alpha,
    legend_band,
    legend_image,
    outline_mask,
    outline_width,
    overlay,
    to_png_bytes,
    with_legend,
    zoom_view,
    zoom_window,
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


def test_overlay_keeps_rgb_order_and_blends_by_opacity_times_the_fade_ramp():
    pixels = np.full((60, 100), 0.5, np.float32)
    heat = left_hot()
    blended = overlay(pixels, heat, colormap="jet", opacity=0.5)
    assert blended.shape == (60, 100, 3) and blended.dtype == np.uint8
    assert blended[30, 0, 0] > blended[30, 0, 2]  # hot end: red first (RGB)
    alpha = (0.5 * np.clip((heat - FADE_LOW) / (1 - FADE_LOW), 0, 1))[..., None]
    expected = np.rint((1 - alpha) * 127.5 + alpha * colorize(heat, colormap="jet").astype(np.float32))
    np.testing.assert_array_equal(blended, expected.astype(np.uint8))
    np.testing.assert_array_equal(overlay(pixels, heat, opacity=0.0), np.full((60, 100, 3), 128, np.uint8))
    full = overlay(pixels, heat, opacity=1.0, colormap="viridis")
    np.testing.assert_array_equal(full[:, 0], colorize(heat, colormap="viridis")[:, 0])  # map at 1: the colour alone


def test_low_heatmap_leaves_the_film_untouched_and_only_the_hot_region_is_tinted():
    rng = np.random.default_rng(1)
    film = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    heat = np.zeros((40, 50), np.float32)
    heat[10:20, 10:25] = 1.0
    heat[30:35, 30:40] = FADE_LOW  # at the cut: still no tint
    out = overlay(film, heat, colormap="turbo", opacity=0.6)
    low = heat <= FADE_LOW
    np.testing.assert_array_equal(out[low], np.repeat(film[low][:, None], 3, axis=1))  # exactly the grey film
    hot = out[10:20, 10:25].astype(int)
    assert (np.abs(hot[..., 0] - hot[..., 2]) > 20).all()  # every hot pixel is coloured, not grey
    floats = film.astype(np.float32) / 255
    np.testing.assert_array_equal(overlay(floats, heat)[low], np.repeat(np.rint(floats[low] * 255)[:, None], 3, 1))


def test_fade_alpha_ramps_from_the_cut_to_the_opacity():
    heat = np.array([[0.0, 0.1, FADE_LOW, 0.6, 1.0]])
    np.testing.assert_allclose(fade_alpha(heat, opacity=0.8), [[0, 0, 0, 0.4, 0.8]], atol=1e-6)
    np.testing.assert_allclose(fade_alpha(heat, opacity=1.0, low=0.0), heat, atol=1e-6)  # no cut: linear
    ramp = fade_alpha(np.linspace(0, 1, 101)[None], opacity=1.0)[0]
    assert (np.diff(ramp) >= 0).all() and ramp[-1] == pytest.approx(1.0)
    with pytest.raises(OverlayError, match=r"fade level must lie in \[0, 1\); got 1.0"):
        fade_alpha(heat, low=1.0)


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


def test_default_outline_is_at_least_three_pixels_and_grows_with_the_film():
    assert outline_width((200, 150)) == 3 and outline_width((1024, 900)) == 4 and outline_width((3072, 2500)) == 12
    heat = np.zeros((80, 120), np.float32)
    heat[20:50, 30:90] = 1.0
    drawn = overlay(np.zeros((80, 120)), heat, outline=True, outline_color=(0, 255, 0))
    column = (drawn[:, 60] == [0, 255, 0]).all(axis=1)
    assert column[20:23].all() and not column[23] and column[47:50].all()  # a 3-pixel line, inside the region
    region = np.zeros((80, 120), bool)
    region[5:15, 5:15] = True  # a given region is outlined instead of the map's own Otsu region
    given = overlay(np.zeros((80, 120)), heat, outline=region, outline_color=(0, 255, 0), outline_px=1)
    assert given[5, 10].tolist() == [0, 255, 0] and given[20, 40].tolist() != [0, 255, 0]


def test_legend_runs_low_to_high_left_to_right():
    bar = legend_image(colormap="turbo", width=200, height=12)
    assert bar.shape == (12, 200, 3) and bar.dtype == np.uint8
    np.testing.assert_array_equal(bar[0], colorize(np.linspace(0, 1, 200)[None], colormap="turbo")[0])
    assert bar[5, -1, 0] > 100 and bar[5, 0, 2] > bar[5, 0, 0]
    assert (bar == bar[0]).all()  # every row the same
    faded = legend_image(colormap="turbo", width=200, height=12, faded=True)
    assert faded[0, 0].tolist() == [128, 128, 128]  # the low end shows no tint, as on the film
    np.testing.assert_array_equal(faded[0, -1], bar[0, -1])  # the high end is the full colour


def _text_pixels(band: np.ndarray, cols: slice, rows: slice = slice(None)) -> int:
    """Light (text) pixels in a part of a dark legend band."""
    return int((band[rows, cols].mean(axis=-1) > 150).sum())


def test_legend_band_labels_low_high_and_the_caption():
    band = legend_band(600, colormap="turbo", caption="tiny-effnet · Grad-CAM · target COVID-19")
    blank = legend_band(600, colormap="turbo")
    h = band.shape[0]
    assert band.shape[1:] == (600, 3) and band.dtype == np.uint8 and h > blank.shape[0]  # the caption adds a line
    assert _text_pixels(band, slice(0, 30), slice(0, h // 3)) > 10  # "low" at the left end of the bar
    assert _text_pixels(band, slice(570, 600), slice(0, h // 3)) > 10  # "high" at the right end
    assert _text_pixels(band, slice(200, 400), slice(h // 3, 2 * h // 3)) > 20  # "relative within this film"
    assert _text_pixels(band, slice(0, 300), slice(2 * h // 3, h)) > 50  # the caption line
    assert _text_pixels(blank, slice(0, 600), slice(2 * h // 3, None)) == 0  # no caption, no text there
    other = legend_band(600, colormap="turbo", caption="other-model · Grad-CAM++ · target Normal")
    assert (other != band).any()  # the caption's words are drawn, not a fixed picture
    big = legend_band(3000, colormap="turbo", caption="x")
    assert big.shape[0] > 3 * blank.shape[0]  # text grows with the film, so it stays readable at full size


def test_with_legend_adds_the_band_under_the_untouched_film():
    rgb = colorize(left_hot(120, 200))
    out = with_legend(rgb, colormap="jet", caption="m · Grad-CAM · target Normal")
    band = legend_band(200, colormap="jet", caption="m · Grad-CAM · target Normal")
    assert out.shape == (120 + band.shape[0], 200, 3)
    np.testing.assert_array_equal(out[:120], rgb)
    np.testing.assert_array_equal(out[120:], band)
    with pytest.raises(OverlayError, match=r"\(H, W, 3\) uint8 RGB image; got shape \(4, 4\)"):
        with_legend(np.zeros((4, 4), np.uint8))


def test_zoom_window_is_moved_inside_the_film():
    assert zoom_window(1) == (0.0, 1.0, 0.0, 1.0)
    assert zoom_window(2, (0.5, 0.5)) == (0.25, 0.75, 0.25, 0.75)
    assert zoom_window(4, (1.0, 0.0)) == (0.75, 1.0, 0.0, 0.25)  # bottom-left corner, not cut off
    with pytest.raises(OverlayError, match="zoom must be one of 1, 2, 4; got 3"):
        zoom_window(3)
    with pytest.raises(OverlayError, match=r"fractions in \[0, 1\]"):
        zoom_window(2, (1.5, 0.5))


def test_zoom_cuts_the_full_size_film_and_keeps_the_whole_maps_outline():
    film = np.tile(np.arange(400, dtype=np.float32) / 399, (200, 1))  # brightness grows to the right
    zoomed = zoom_view(film, zoom=2, centre=(0.5, 0.0))
    assert zoomed.shape == (100, 200) and zoomed.dtype == np.uint8
    np.testing.assert_array_equal(zoomed, np.rint(film[50:150, 0:200] * 255).astype(np.uint8))  # own resolution
    small = zoom_view(film, zoom=1, max_side=100)
    assert small.shape == (50, 100)  # fitted inside max_side
    heat = np.zeros((50, 100), np.float32)  # a display-size map of the same film
    heat[10:40, 10:40] = 1.0
    out = zoom_view(film, heat, zoom=2, centre=(0.5, 0.0), outline=True, opacity=0.5)
    assert out.shape == (100, 200, 3)
    white = (out == 255).all(axis=-1)
    assert white[:, 40].any() and white[40, :].any()  # the edge of the hot square, at 4x its display size
    assert not white[:, 180].any()  # nothing drawn where the whole map's region is not
    np.testing.assert_array_equal(out[:, 190], np.repeat(zoomed[:, 190, None], 3, 1))  # cold: the film as it is


def test_png_bytes_round_trip_in_rgb_order():
    rgb = colorize(left_hot(20, 30))
    decoded = np.asarray(Image.open(io.BytesIO(to_png_bytes(rgb))).convert("RGB"))
    np.testing.assert_array_equal(decoded, rgb)
    assert to_png_bytes(np.zeros((4, 5), np.uint8)).startswith(b"\x89PNG")


def test_png_text_chunks_carry_what_made_the_overlay():
    data = to_png_bytes(colorize(left_hot(20, 30)), text={"Model": "tiny-effnet", "Method": "Grad-CAM",
                                                         "Target": "COVID-19", "Title": "a · b"})
    assert b"tEXtModel\x00tiny-effnet" in data  # a plain tEXt chunk
    assert Image.open(io.BytesIO(data)).text == {"Model": "tiny-effnet", "Method": "Grad-CAM", "Target": "COVID-19",
                                                 "Title": "a · b"}


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


def test_jpeg_bytes_decode_to_the_same_picture_and_refuse_floats():
    import io

    from PIL import Image

    from cxr_core.explain.overlay import OverlayError, to_jpeg_bytes

    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (200, 40, 40)
    data = to_jpeg_bytes(rgb)
    back = np.asarray(Image.open(io.BytesIO(data)))
    assert data[:2] == b"\xff\xd8" and back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 4  # lossy, but the same picture
    with pytest.raises(OverlayError):
        to_jpeg_bytes(rgb.astype(np.float32))
