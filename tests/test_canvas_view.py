"""The canvas as a viewer: zoomed drawings measure as in the full frame, sizes fit, pictures are sharp and honest."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cxr_core import annotation as ann
from cxr_core.annotation.canvas_view import (
    HEAT_FLOOR,
    REGIONS,
    ZOOMS,
    CanvasViewError,
    View,
    canvas_size,
    frame_fit,
    from_view,
    heat_alpha,
    heatmap_over,
    refit_drawing,
    rescale_drawing,
    to_view,
    transform_drawing,
    view_picture,
    view_transform,
)
from cxr_core.annotation.masks import rasterize

FILM = (419, 512)  # rows, cols: letterboxed top and bottom in a square canvas
STROKE = 3


# --- shapes as the canvas's tools serialise them, from a region given in canvas pixels ---------


def rect_tool(x0, y0, w, h):
    """The rect tool: origin left/top on the stroke's outer corner, uniform stroke."""
    return {"type": "Rect", "left": x0 - STROKE / 2, "top": y0 - STROKE / 2, "width": w, "height": h,
            "originX": "left", "originY": "top", "strokeWidth": STROKE, "strokeUniform": True,
            "stroke": "#ff4b4b", "fill": "rgba(255, 75, 75, 0.2)"}


def circle_tool(cx, cy, r):
    """A circle placed by its top-left box corner with a scaled (non-uniform) stroke."""
    return {"type": "Circle", "radius": r, "left": cx - (2 * r + STROKE) / 2, "top": cy - (2 * r + STROKE) / 2,
            "originX": "left", "originY": "top", "strokeWidth": STROKE, "stroke": "#3d9df3"}


def polygon_tool(points):
    """The polygon tool: absolute points, origin centre on their box."""
    pts = np.asarray(points, dtype=float)
    lo, hi = pts.min(0), pts.max(0)
    return {"type": "Polygon", "points": [{"x": x, "y": y} for x, y in pts], "left": (lo[0] + hi[0]) / 2,
            "top": (lo[1] + hi[1]) / 2, "width": hi[0] - lo[0], "height": hi[1] - lo[1], "originX": "center",
            "originY": "center", "strokeWidth": STROKE, "stroke": "#f0e130"}


def freehand(points):
    """A pen stroke: M, Q..., L in absolute canvas pixels, origin centre on the curve's box, no fill."""
    pts = np.asarray(points, dtype=float)
    path = [["M", *pts[0]]] + [["Q", *pts[i], *(pts[i] + pts[i + 1]) / 2] for i in range(1, len(pts) - 1)]
    path.append(["L", *pts[-1]])
    # Fabric's box of the path: the drawn points bound it closely enough for a test of moving it.
    ctrl = np.array([c[1:3] for c in path] + [c[3:5] for c in path if c[0] == "Q"])
    lo, hi = ctrl.min(0), ctrl.max(0)
    return {"type": "Path", "path": path, "left": (lo[0] + hi[0]) / 2, "top": (lo[1] + hi[1]) / 2,
            "width": hi[0] - lo[0], "height": hi[1] - lo[1], "originX": "center", "originY": "center",
            "strokeWidth": STROKE, "fill": None, "stroke": "#21c354"}


def shapes(mapper, k: float = 1.0):
    """Rect, circle, polygon and freehand over the same film regions, drawn in a frame where a full-frame
    point p is at ``mapper(p)`` and lengths are ``k`` times longer (what the reader's mouse produces)."""
    m = lambda x, y: mapper(np.array([x, y], dtype=float))  # noqa: E731
    out = []
    x0, y0 = m(130, 160)
    out.append(rect_tool(x0, y0, 90 * k, 60 * k))
    cx, cy = m(420, 250)
    out.append(circle_tool(cx, cy, 40 * k))
    out.append(polygon_tool([m(260, 330), m(340, 300), m(380, 400), m(300, 440), m(250, 410)]))
    ring = [(200 + 45 * np.cos(t), 420 + 35 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 14)]
    out.append(freehand([m(x, y) for x, y in ring]))
    return out


def bbox(mask):
    rc = np.argwhere(mask)
    return np.array([*rc.min(0), *rc.max(0)])


def assert_same_region(got, want):
    assert want.sum() > 200
    assert abs(int(got.sum()) - int(want.sum())) <= 0.005 * want.sum()
    assert np.abs(bbox(got) - bbox(want)).max() <= 1


# --- views ---------------------------------------------------------------------------------------


def test_view_rejects_unknown_zoom_centre_and_region():
    with pytest.raises(CanvasViewError, match=r"zoom 3; expected one of 1, 2, 4"):
        View(3)
    with pytest.raises(CanvasViewError, match=r"view centre x=1.5"):
        View(2, 1.5, 0.5)
    with pytest.raises(CanvasViewError, match=r"region 'top'; expected one of upper left"):
        View.at(2, "top")
    assert len(REGIONS) == 9 and View.at(4, "centre") == View(4, 0.5, 0.5)


def test_zoom_one_is_the_full_frame():
    t = view_transform(View(1, 0.1, 0.9), FILM, 600, 600)
    assert (t.scale, t.dx, t.dy, t.box) == (1.0, 0.0, 0.0, (0.0, 0.0, 600.0, 600.0))


@pytest.mark.parametrize("zoom", [2, 4])
@pytest.mark.parametrize("region", list(REGIONS))
def test_region_shown_is_on_the_film_and_the_right_size(zoom, region):
    fit = frame_fit(FILM, 600, 600)
    film_top, film_bottom = fit["offset_y"], fit["offset_y"] + FILM[0] * fit["scale_y"]
    t = view_transform(View.at(zoom, region), FILM, 600, 600)
    x0, y0, x1, y1 = t.box
    assert x1 - x0 == pytest.approx(600 / zoom) and y1 - y0 == pytest.approx(600 / zoom)
    assert 0 <= x0 and x1 <= 600 + 1e-9 and film_top - 1e-9 <= y0 and y1 <= film_bottom + 1e-9
    # the map sends the box's corners to the canvas's corners
    assert t.scale * x0 + t.dx == pytest.approx(0, abs=1e-9) and t.scale * y1 + t.dy == pytest.approx(600)


def test_corner_views_touch_the_film_edges_and_a_narrow_film_is_centred():
    fit = frame_fit(FILM, 600, 600)
    t = view_transform(View(2, 0, 0), FILM, 600, 600)
    assert t.box[:2] == (0.0, pytest.approx(fit["offset_y"]))
    t = view_transform(View(2, 1, 1), FILM, 600, 600)
    assert t.box[2:] == (600.0, pytest.approx(fit["offset_y"] + FILM[0] * fit["scale_y"]))
    # a film 100 px wide in a 600 px canvas: a 2x view (300 px wide) is centred on it, whatever x says
    t = view_transform(View(2, 0, 0), (600, 100), 600, 600)
    assert t.box[0] == pytest.approx(150) and t.box[1] == 0


# --- drawings between frames --------------------------------------------------------------------


def odd_objects():
    """Objects with every feature the move must respect: rotation, skew, flips, numeric origins, stroke kinds."""
    rot = rect_tool(100, 120, 80, 40) | {"angle": 33, "scaleX": 1.3, "scaleY": 0.7}
    skew = polygon_tool([(300, 200), (380, 210), (360, 290)]) | {"skewX": 12, "skewY": -7, "flipX": True,
                                                                    "originX": "left", "originY": "bottom"}
    num = circle_tool(200, 380, 30) | {"originX": 0.25, "originY": 0.8, "angle": -20}
    bare = {"type": "Rect", "left": 20, "top": 30, "width": 50, "height": 20, "originX": "right"}  # stroke 1 default
    return [rot, skew, num, bare, freehand([(400, 400), (450, 380), (470, 440), (420, 470)])]


@pytest.mark.parametrize("view", [View(2, 0.3, 0.6), View(4, 0.9, 0.1), View(4, 0.5, 0.5), View(1)])
def test_round_trip_is_exact_and_input_untouched(view):
    drawing = {"version": "7.4.0", "objects": odd_objects()}
    before = copy.deepcopy(drawing)
    there = to_view(drawing, view, 600, 600, film_shape=FILM)
    back = from_view(there, view, 600, 600, film_shape=FILM)
    assert drawing == before and back["version"] == "7.4.0"
    for got, want in zip(back["objects"], drawing["objects"]):
        for key in ("left", "top", "scaleX", "scaleY", "strokeWidth"):
            assert got.get(key, 1.0 if key != "left" else 0) == pytest.approx(want.get(key, 1.0), abs=1e-9)
        for key in ("angle", "skewX", "points", "path", "width", "height", "radius", "originX", "stroke", "fill"):
            assert got.get(key) == want.get(key)


@pytest.mark.parametrize("view", [View(2, 0.3, 0.6), View(4, 0.9, 0.1), View(4, 0, 1)])
def test_every_object_is_moved_exactly_even_rotated_skewed_and_flipped(view):
    # Every point must land on k * p + d. Rasterise both on the grid of k * (full frame): the full-frame objects
    # through a fit of scale 1/k, the moved ones through a fit that takes the shift d off again.
    objects = odd_objects()
    t = view_transform(view, FILM, 600, 600)
    moved = to_view(objects, view, 600, 600, film_shape=FILM)
    grid = (int(600 * t.scale), int(600 * t.scale))
    for obj, obj_moved in zip(objects, moved):
        want = rasterize([obj], image_shape=grid, background_fit={"scale_x": 1 / t.scale, "scale_y": 1 / t.scale,
                                                                  "offset_x": 0, "offset_y": 0})
        got = rasterize([obj_moved], image_shape=grid, background_fit={"scale_x": 1, "scale_y": 1,
                                                                       "offset_x": t.dx, "offset_y": t.dy})
        assert want.sum() > 1000
        assert (got != want).sum() <= 0.001 * want.sum()


def test_stroke_keeps_its_width_on_screen():
    poly, rect = polygon_tool([(10, 10), (50, 10), (30, 40)]), rect_tool(10, 10, 40, 30)
    scaled, uniform = to_view([poly, rect], View(4, 0.2, 0.2), 600, 600, film_shape=FILM)
    assert scaled["strokeWidth"] * scaled["scaleX"] == pytest.approx(STROKE)
    assert uniform["strokeWidth"] == STROKE and uniform["scaleX"] == 4


@pytest.mark.parametrize("size", [(600, 600), (700, 480)])
@pytest.mark.parametrize("view", [View(2, 0.2, 0.3), View(2, 0.8, 0.7), View(4, 0.3, 0.5), View(4, 0.6, 0.85)])
def test_drawn_zoomed_measures_as_drawn_in_the_full_view(size, view):
    width, height = size
    t = view_transform(view, FILM, width, height)
    fit = frame_fit(FILM, width, height)
    full = shapes(lambda p: p)
    zoomed = shapes(lambda p: t.scale * p + np.array([t.dx, t.dy]), k=t.scale)
    back = from_view({"objects": zoomed}, view, width, height, film_shape=FILM)
    for got_obj, want_obj in zip(back["objects"], full):
        want = rasterize([want_obj], image_shape=FILM, background_fit=fit)
        got = rasterize([got_obj], image_shape=FILM, background_fit=fit)
        assert_same_region(got, want)
    # the page's reading: same regions, findings and area as the full-view drawing
    got_reading = ann.read_canvas(back, image_shape=FILM, background_fit=fit)
    want_reading = ann.read_canvas({"objects": full}, image_shape=FILM, background_fit=fit)
    assert got_reading.labels == want_reading.labels == ["consolidation", "effusion", "nodule/mass", "other"]
    assert abs(got_reading.area_px - want_reading.area_px) <= 0.005 * want_reading.area_px


@pytest.mark.parametrize("view", [View.at(2, "upper left"), View.at(4, "middle right"), View.at(4, "lower centre")])
def test_a_mark_on_what_the_zoomed_picture_shows_lands_on_those_film_pixels(view):
    # A bright block on the film; find it in the zoomed picture, draw a rect round it there, measure it.
    rows, cols = FILM
    film = np.zeros(FILM, np.float32)
    r0, c0 = int(view.y * rows) - 8, int(view.x * cols) - 10
    r0, c0 = min(max(r0, 4), rows - 24), min(max(c0, 4), cols - 28)
    film[r0:r0 + 16, c0:c0 + 20] = 1.0
    picture = np.asarray(view_picture(film, view, 600, 600))
    ys, xs = np.nonzero(picture > 127)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    drawn = {"objects": [rect_tool(x0, y0, x1 - x0, y1 - y0)]}
    mask = rasterize(from_view(drawn, view, 600, 600, film_shape=FILM), image_shape=FILM,
                     background_fit=frame_fit(FILM, 600, 600))
    assert np.abs(bbox(mask) - [r0, c0, r0 + 15, c0 + 19]).max() <= 1


def test_rescaled_drawing_measures_the_same_on_a_larger_canvas():
    drawing = {"objects": shapes(lambda p: p) + odd_objects()[:3]}
    old_fit, new_fit = frame_fit(FILM, 600, 600), frame_fit(FILM, 917, 750)
    moved = rescale_drawing(drawing, 600, 600, 917, 750, film_shape=FILM)
    for got_obj, want_obj in zip(moved["objects"], drawing["objects"]):
        want = rasterize([want_obj], image_shape=FILM, background_fit=old_fit)
        assert_same_region(rasterize([got_obj], image_shape=FILM, background_fit=new_fit), want)


def test_draft_stored_with_the_old_picture_fit_is_refitted_to_the_frame():
    # Today's page shows a 600 px copy (512 x 419 -> 600 x 491) in a 600 x 600 canvas and stores the
    # browser's fit of that copy; the new canvas uses the film's own fit at its own size.
    stored_fit = ann.contain_fit(600, 491, 600, 600)
    drawing = {"objects": shapes(lambda p: p)}
    new_fit = frame_fit(FILM, 855, 700)
    moved = refit_drawing(drawing, stored_fit, new_fit)
    want = rasterize(drawing, image_shape=FILM, background_fit=stored_fit)
    assert_same_region(rasterize(moved, image_shape=FILM, background_fit=new_fit), want)
    with pytest.raises(CanvasViewError, match="expected the same film"):
        refit_drawing(drawing, stored_fit, frame_fit((512, 512), 600, 600))
    bare_fit = {"scale_x": 0.8, "scale_y": 0.8, "offset_x": 5, "offset_y": 40}  # a fit of the film itself
    with pytest.raises(CanvasViewError, match="natural_width/height"):
        refit_drawing(drawing, bare_fit, new_fit)
    want = rasterize(drawing, image_shape=FILM, background_fit=bare_fit)
    moved = refit_drawing(drawing, bare_fit, new_fit, film_shape=FILM)
    assert_same_region(rasterize(moved, image_shape=FILM, background_fit=new_fit), want)


def test_bad_drawings_and_sizes_say_what_was_expected():
    with pytest.raises(CanvasViewError, match="scaleX='big'"):
        to_view([rect_tool(1, 1, 5, 5) | {"scaleX": "big"}], View(2), 600, 600, film_shape=FILM)
    with pytest.raises(CanvasViewError, match="originX='middle'"):
        transform_drawing([rect_tool(1, 1, 5, 5) | {"originX": "middle"}], 2, 0, 0)
    with pytest.raises(CanvasViewError, match="canvas size 0 x 600"):
        to_view([], View(2), 0, 600, film_shape=FILM)
    with pytest.raises(CanvasViewError, match="film_shape"):
        frame_fit((419, -1), 600, 600)
    assert to_view(None, View(2), 600, 600, film_shape=FILM) == {"objects": []}


# --- canvas size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("space", [(880, 560), (1250, 860), (300, 200), (3000, 3000)])
@pytest.mark.parametrize("aspect", [512 / 419, 0.8, 1.0])
def test_canvas_fits_the_space_with_the_films_shape(space, aspect):
    w, h = canvas_size(*space, aspect)
    if min(space) >= 320 / min(aspect, 1 / aspect) and max(space) < 1400:
        assert w <= space[0] and h <= space[1]
        assert w == space[0] or h == space[1] or h + 1 >= space[1] or w + 1 >= space[0]  # as large as fits
    assert abs(w / h - aspect) <= 2 / min(w, h)
    assert max(w, h) <= 1400 or min(w, h) == 320
    assert min(w, h) >= 319


def test_canvas_size_limits_and_bad_input():
    assert canvas_size(5000, 5000, 1.0) == (1400, 1400)
    assert canvas_size(100, 100, 1.0) == (320, 320)  # too little space: still usable
    assert canvas_size(1366 - 400, 768 - 220, 512 / 419) == (669, 548)
    with pytest.raises(CanvasViewError, match="film_aspect=0"):
        canvas_size(800, 600, 0)
    with pytest.raises(CanvasViewError, match="available_width=800.5"):
        canvas_size(800.5, 600, 1.0)


# --- pictures ------------------------------------------------------------------------------------


def ramp_film(rows=419, cols=512):
    return np.tile(np.linspace(0.05, 0.95, cols, dtype=np.float32), (rows, 1))


def test_full_view_picture_is_the_contain_fitted_film_with_black_bars():
    film = ramp_film()
    pic = np.asarray(view_picture(film, View(1), 600, 600))
    fit = frame_fit(FILM, 600, 600)
    top, bottom = int(np.ceil(fit["offset_y"] - 0.5)), int(np.floor(fit["offset_y"] + 419 * fit["scale_y"] - 0.5))
    assert pic.shape == (600, 600) and pic.dtype == np.uint8
    assert (pic[:top] == 0).all() and (pic[bottom + 1:] == 0).all()
    # columns run from dark to light across the whole canvas width, as the film does
    row = pic[300].astype(int)
    expected = np.rint(np.interp((np.arange(600) + 0.5) / fit["scale_x"] - 0.5, np.arange(512), film[0]) * 255)
    assert np.abs(row - expected).max() <= 2


def test_window_level_and_invert_apply_to_the_film_not_the_bars():
    film = ramp_film()
    plain = np.asarray(view_picture(film, View(2, 0.5, 0.5), 640, 480), dtype=int)
    narrow = np.asarray(view_picture(film, View(2, 0.5, 0.5), 640, 480, level=0.5, window=0.2), dtype=int)
    assert plain.shape == (480, 640)
    assert narrow[240, :100].max() == 0 and narrow[240, -100:].min() == 255  # clipped by the narrow window
    inv = np.asarray(view_picture(film, View(1), 600, 600, invert=True), dtype=int)
    full = np.asarray(view_picture(film, View(1), 600, 600), dtype=int)
    assert (inv[:50] == 0).all()  # bars stay black
    np.testing.assert_array_equal(inv[300], 255 - full[300])


def test_four_times_zoom_is_rendered_from_the_full_resolution_film():
    # 1 px stripes on a 2400 px film: at 1x (4 film px per canvas px) they average to grey; at 4x each
    # canvas px is one film px, so they are there. An upscaled 600 px picture would be flat grey.
    film = np.zeros((2400, 2400), np.float32)
    film[:, ::2] = 1.0
    one = np.asarray(view_picture(film, View(1), 600, 600), dtype=float)
    four = np.asarray(view_picture(film, View.at(4, "upper left"), 600, 600), dtype=float)
    assert one[100:500, 100:500].std() < 5 and abs(one[100:500, 100:500].mean() - 127.5) < 2
    assert four[100:500, 100:500].std() > 100
    assert view_picture(film, View(4), 600, 600, pixel_ratio=2).size == (1200, 1200)


def test_rgb_film_gives_the_same_picture_in_colour():
    film = ramp_film()
    grey = np.asarray(view_picture(film, View(2, 0.2, 0.7), 600, 600))
    rgb = view_picture(np.repeat((film * 255).round().astype(np.uint8)[..., None], 3, axis=2),
                       View(2, 0.2, 0.7), 600, 600)
    assert rgb.mode == "RGB"
    assert np.abs(np.asarray(rgb, dtype=int) - grey[..., None]).max() <= 1


def test_heatmap_in_the_view_is_clear_where_low_and_coloured_where_high():
    film = ramp_film()
    heat = np.zeros((64, 64), np.float32)
    heat[:, 40:] = 1.0  # hot right part
    base = np.asarray(view_picture(film, View(1), 600, 600).convert("RGB"), dtype=int)
    pic = np.asarray(view_picture(film, View(1), 600, 600, heatmap=heat, opacity=0.6), dtype=int)
    assert (pic[300, :300] == base[300, :300]).all()  # low: the film untouched, no tint
    hot = pic[300, 500]
    red = np.array([122, 4, 3])  # turbo at 1
    np.testing.assert_allclose(hot, np.rint(0.4 * base[300, 500] + 0.6 * red), atol=2)
    assert (pic[:40] == 0).all()  # bars stay black


def test_heatmap_over_fades_below_the_floor_and_blends_above():
    film = (ramp_film(40, 50) * 255).astype(np.uint8)
    before = film.copy()
    heat = np.full((40, 50), 0.1, np.float32)
    heat[10:20, 10:20] = 1.0
    heat[30:, 30:] = HEAT_FLOOR
    out = heatmap_over(film, heat, opacity=0.5, colormap="jet")
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(film, before)
    low = np.ones((40, 50), bool)
    low[10:20, 10:20] = False
    np.testing.assert_array_equal(out[low], np.repeat(film[low][:, None], 3, axis=1))
    np.testing.assert_allclose(out[15, 15], np.rint(0.5 * film[15, 15] + 0.5 * np.array([128, 0, 0])), atol=1)
    # any heatmap size is resized to the film
    small = heatmap_over(film, np.eye(5, dtype=np.float32), opacity=1.0)
    assert small.shape == (40, 50, 3) and (small[0, 0] != film[0, 0]).any() and (small[0, -1] == film[0, -1]).all()


def test_heat_alpha_ramp_and_bad_inputs():
    alpha = heat_alpha(np.array([[0.0, HEAT_FLOOR, 0.6, 1.0]]), opacity=0.5)
    np.testing.assert_allclose(alpha, [[0, 0, 0.25, 0.5]], atol=1e-6)
    with pytest.raises(CanvasViewError, match="opacity 1.5"):
        heatmap_over(np.zeros((4, 4)), np.zeros((4, 4)), opacity=1.5)
    with pytest.raises(CanvasViewError, match=r"heatmap values outside \[0, 1\]"):
        heatmap_over(np.zeros((4, 4)), np.full((4, 4), 2.0))
    with pytest.raises(CanvasViewError, match="colour map 'rainbow'"):
        view_picture(np.zeros((4, 4)), View(1), 10, 10, heatmap=np.zeros((4, 4)), colormap="rainbow")
    with pytest.raises(CanvasViewError, match=r"film of shape \(4, 4, 2\)"):
        view_picture(np.zeros((4, 4, 2)), View(1), 10, 10)
    with pytest.raises(CanvasViewError, match="film values outside"):
        view_picture(np.full((4, 4), 3.0), View(1), 10, 10)
    assert ZOOMS == (1, 2, 4)
