"""Canvas JSON to masks: hand-computed pixels and areas, and shapes as Fabric 7.4 renders them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxr_core.annotation.masks import MaskError, UnsupportedShapeError, canvas_objects, rasterize, region_masks


def rect(left, top, width, height, **kw):
    obj = {"type": "Rect", "left": left, "top": top, "width": width, "height": height,
           "originX": "left", "originY": "top", "strokeWidth": 0}
    obj.update(kw)
    return obj


def polygon(points, **kw):
    """A Polygon as Fabric's polygon tool serialises it: origin centre, left/top = box centre."""
    pts = np.asarray(points, dtype=float)
    lo, hi = pts.min(0), pts.max(0)
    obj = {"type": "Polygon", "points": [{"x": x, "y": y} for x, y in pts], "left": (lo[0] + hi[0]) / 2,
           "top": (lo[1] + hi[1]) / 2, "width": hi[0] - lo[0], "height": hi[1] - lo[1],
           "originX": "center", "originY": "center", "strokeWidth": 20}
    obj.update(kw)
    return obj


def pixels(mask):
    """(row0, col0, row1, col1) inclusive bounding box of a mask."""
    rc = np.argwhere(mask)
    return (*rc.min(0), *rc.max(0))


# --- hand-computed --------------------------------------------------------------------------


def test_rectangle_exact_pixels():
    mask = rasterize([rect(10, 20, 30, 40)], image_shape=(100, 100))
    assert mask.dtype == bool and mask.shape == (100, 100)
    assert mask.sum() == 1200
    assert pixels(mask) == (20, 10, 59, 39)


def test_rect_tool_stroke_shifts_geometry_by_half_stroke():
    # The rect tool sets originX/Y left/top and strokeUniform: left/top is the stroke's outer
    # corner, so the filled 30 x 40 area starts 1.5 px in.
    mask = rasterize([rect(10, 20, 30, 40, strokeWidth=3, strokeUniform=True)], image_shape=(100, 100))
    assert mask.sum() == 1200
    assert pixels(mask) == (21, 11, 60, 40)


def test_triangle_counts_pixel_centres():
    # Right triangle x, y >= 0, x + y <= 40: pixel (r, c) is in iff c + r + 1 < 40 (the
    # hypotenuse itself is outside), i.e. sum over r of (39 - r) = 780 pixels.
    mask = rasterize([polygon([(0, 0), (40, 0), (0, 40)])], image_shape=(50, 50))
    assert mask.sum() == 780
    assert mask[0, 38] and not mask[0, 39] and mask[38, 0] and not mask[39, 0]


def test_polygon_moved_and_scaled_after_drawing():
    obj = polygon([(0, 0), (20, 0), (20, 10), (0, 10)], left=50, top=40, scaleX=2, scaleY=3)
    mask = rasterize([obj], image_shape=(100, 100))
    assert mask.sum() == 40 * 30
    assert pixels(mask) == (25, 30, 54, 69)


def test_rotated_rectangle_90_degrees_about_its_centre():
    obj = rect(50, 50, 20, 10, originX="center", originY="center", angle=90)
    mask = rasterize([obj], image_shape=(100, 100))
    assert mask.sum() == 200
    assert pixels(mask) == (40, 45, 59, 54)


def test_rotated_rectangle_45_degrees_about_top_left():
    # Fabric rotates about left/top: a 20 x 20 square at (50, 20) turned 45 degrees is a
    # diamond with its top corner at (50, 20) and its centre at (50, 20 + 20/sqrt 2).
    obj = rect(50, 20, 20, 20, angle=45)
    mask = rasterize([obj], image_shape=(80, 100))
    assert abs(int(mask.sum()) - 400) <= 12
    centre_row = 20 + 10 * math.sqrt(2)
    assert mask[int(centre_row), 49] and mask[int(centre_row), 50]
    assert not mask[19, 50] and mask[22, 50]
    assert pixels(mask)[0] == 20 and abs(pixels(mask)[2] - (20 + 20 * math.sqrt(2))) < 1.5


def test_freehand_square_loop_is_closed_and_filled():
    # Freedraw gives a Path with fill null; it must be filled, not a 1-px ring.
    path = {"type": "Path", "fill": None, "strokeWidth": 20, "left": 30, "top": 30, "width": 40, "height": 40,
            "path": [["M", 10, 10], ["L", 50, 10], ["L", 50, 50], ["L", 10, 50]]}
    mask = rasterize([path], image_shape=(60, 60))
    assert mask.sum() == 1600
    assert pixels(mask) == (10, 10, 49, 49)


def test_freehand_quadratic_circle_area():
    # A PencilBrush-like loop of quadratic segments through points on a circle of radius 30.
    angles = np.linspace(0, 2 * np.pi, 41)
    pts = np.c_[50 + 30 * np.cos(angles), 50 + 30 * np.sin(angles)]
    cmds = [["M", *pts[0]]]
    for a, b in zip(pts[:-1], pts[1:]):
        mid = (a + b) / 2
        cmds.append(["Q", a[0], a[1], mid[0], mid[1]])
    path = {"type": "path", "fill": None, "left": 50, "top": 50, "width": 60, "height": 60, "path": cmds}
    area = rasterize([path], image_shape=(100, 100)).sum()
    assert abs(area - np.pi * 30**2) / (np.pi * 30**2) < 0.02


def test_circle_tool_centre_and_area():
    # Circle tool: originX left, originY centre at the press point; centre is radius + stroke/2 along angle.
    obj = {"type": "Circle", "left": 20, "top": 50, "radius": 15, "strokeWidth": 4,
           "originX": "left", "originY": "center", "angle": 0}
    mask = rasterize([obj], image_shape=(100, 100))
    assert abs(mask.sum() - np.pi * 225) < 0.02 * np.pi * 225
    centre = np.argwhere(mask).mean(0) + 0.5
    assert np.allclose(centre, (50, 37), atol=0.05)


def test_stretched_background_fit_is_undone():
    # A 200-row x 100-col image stretched onto a 400 x 400 canvas: scale_x 4, scale_y 2.
    fit = {"natural_width": 100, "natural_height": 200, "scale_x": 4.0, "scale_y": 2.0, "offset_x": 0, "offset_y": 0}
    mask = rasterize([rect(40, 40, 80, 80)], image_shape=(200, 100), background_fit=fit)
    assert mask.sum() == 20 * 40
    assert pixels(mask) == (20, 10, 59, 29)


def test_contained_background_fit_offset_is_undone():
    # 100 rows x 200 cols contained in 400 x 400: scale 2, letterbox offset_y 100.
    fit = {"natural_width": 200, "natural_height": 100, "scale_x": 2.0, "scale_y": 2.0, "offset_x": 0, "offset_y": 100}
    mask = rasterize([rect(0, 100, 40, 40)], image_shape=(100, 200), background_fit=fit)
    assert pixels(mask) == (0, 0, 19, 19) and mask.sum() == 400


def test_canvas_showed_a_resized_copy():
    # The canvas showed a 100 x 50 copy of a 400 x 200 original: masks come out at 400 x 200.
    fit = {"natural_width": 50, "natural_height": 100, "scale_x": 1.0, "scale_y": 1.0, "offset_x": 0, "offset_y": 0}
    mask = rasterize([rect(10, 10, 10, 20)], image_shape=(400, 200), background_fit=fit)
    assert mask.shape == (400, 200) and pixels(mask) == (40, 40, 119, 79)


def test_shapes_outside_the_image_are_clipped():
    mask = rasterize([rect(-10, -10, 20, 20), rect(95, 95, 50, 50)], image_shape=(100, 100))
    assert mask.sum() == 100 + 25


def test_type_names_are_case_insensitive_and_labels_align():
    objs = [rect(0, 0, 10, 10, type="RECT"), {"type": "Line", "x1": 0, "y1": 0, "x2": 5, "y2": 5},
            dict(rect(20, 20, 5, 5), type="LabeledRect", label="nodule")]
    regions = region_masks(objs, image_shape=(50, 50), labels=["opacity", None, "nodule"])
    got = [(r.index, r.kind, r.label, r.area) for r in regions]
    assert got == [(0, "rect", "opacity", 100), (2, "labeledrect", "nodule", 25)]
    own = region_masks(json.dumps({"objects": objs}), image_shape=(50, 50))
    assert [r.label for r in own] == [None, "nodule"]


def test_evenodd_leaves_a_hole_and_nonzero_fills_it():
    outer = [["M", 0, 0], ["L", 40, 0], ["L", 40, 40], ["L", 0, 40], ["Z"]]
    inner = [["M", 10, 10], ["L", 30, 10], ["L", 30, 30], ["L", 10, 30], ["Z"]]  # same direction
    path = {"type": "Path", "left": 20, "top": 20, "width": 40, "height": 40, "path": outer + inner}
    assert rasterize([path], image_shape=(40, 40)).sum() == 1600
    assert rasterize([dict(path, fillRule="evenodd")], image_shape=(40, 40)).sum() == 1600 - 400


def test_empty_drawings_give_empty_masks():
    assert rasterize(None, image_shape=(5, 6)).shape == (5, 6)
    assert not rasterize({"objects": []}, image_shape=(5, 6)).any()
    assert not rasterize([polygon([(1, 1), (3, 1)])], image_shape=(5, 6)).any()


# --- objects serialised and rendered by Fabric 7.4.0 itself ------------------------------------
# Each object below was built in Chromium with the Fabric classes of the
# streamlit-drawable-canvas 0.13.0 bundle (as its rect/circle/polygon/freedraw tools build them,
# some then moved, scaled, rotated, flipped or skewed), serialised with toObject(), and rendered
# filled on a 200 x 160 canvas; area and centroid (row, col) are of the pixels with alpha >= 128.

FABRIC_RENDERED = [
    ('{"type":"Rect","left":30.3,"top":20.7,"width":80,"height":50,"originX":"left","originY":"top","strokeWidth":7,"strokeUniform":true}', 3999, (48.51, 73.49)),  # noqa: E501
    ('{"type":"Rect","left":30,"top":20,"width":80,"height":50,"originX":"left","originY":"top","scaleX":1.3,"scaleY":0.7,"angle":33,"strokeWidth":7,"strokeUniform":true}', 3640, (67.34, 64.64)),  # noqa: E501
    ('{"type":"Rect","left":100,"top":80,"width":60,"height":30,"originX":"right","originY":"bottom","angle":-20,"flipX":true,"skewX":15,"strokeWidth":5}', 1796, (75.79, 58.58)),  # noqa: E501
    ('{"type":"Circle","left":40,"top":70,"width":50,"height":50,"originX":"left","originY":"center","angle":37,"strokeWidth":9,"radius":25}', 1946, (87.29, 63.1)),  # noqa: E501
    ('{"type":"Circle","left":120,"top":70,"width":60,"height":60,"originX":"center","originY":"center","scaleX":1.5,"angle":60,"strokeWidth":4,"radius":30}', 4214, (69.49, 119.48)),  # noqa: E501
    ('{"type":"Ellipse","left":90,"top":90,"width":100,"height":40,"originX":"left","originY":"top","angle":25,"strokeWidth":3,"rx":50,"ry":20}', 3135, (130.79, 127.1)),  # noqa: E501
    ('{"type":"Polygon","left":95,"top":82.5,"width":150,"height":115,"originX":"center","originY":"center","strokeWidth":20,"points":[{"x":20,"y":30},{"x":150,"y":25},{"x":170,"y":140},{"x":60,"y":120},{"x":90,"y":70}]}', 9720, (77.3, 112.53)),  # noqa: E501
    ('{"type":"Polygon","left":105,"top":77.5,"width":150,"height":115,"originX":"center","originY":"center","scaleX":0.8,"scaleY":1.1,"angle":12,"strokeWidth":12,"points":[{"x":20,"y":30},{"x":150,"y":25},{"x":170,"y":140},{"x":60,"y":120}]}', 10631, (72.04, 111.25)),  # noqa: E501
    ('{"type":"Polygon","left":14,"top":19,"width":150,"height":115,"originX":"left","originY":"top","scaleX":0.9,"angle":-15,"strokeWidth":12,"points":[{"x":20,"y":30},{"x":150,"y":25},{"x":170,"y":140},{"x":60,"y":120}]}', 10779, (54.41, 104.87)),  # noqa: E501
    ('{"type":"Path","left":99.2208,"top":80.7383,"width":112.6695,"height":113.0651,"originX":"center","originY":"center","strokeWidth":20,"fill":null,"path":[["M",50,40],["Q",50,40,52,39],["Q",80,20,120,35],["Q",160,50,150,100],["Q",140,140,90,135],["Q",40,130,45,90],["Q",48,60,60,50],["L",62,48]]}', 9418, (82.38, 97.25)),  # noqa: E501
    ('{"type":"Path","left":106.2208,"top":83.7383,"width":112.6695,"height":113.0651,"originX":"center","originY":"center","scaleX":0.7,"scaleY":0.9,"angle":20,"strokeWidth":20,"fill":null,"path":[["M",50,40],["Q",50,40,52,39],["Q",80,20,120,35],["Q",160,50,150,100],["Q",140,140,90,135],["Q",40,130,45,90],["Q",48,60,60,50],["L",62,48]]}', 5931, (84.77, 103.99)),  # noqa: E501
    ('{"type":"Path","left":94.2429,"top":76.4095,"width":129.8853,"height":116.3502,"originX":"center","originY":"center","scaleY":0.8,"angle":8,"strokeWidth":6,"path":[["M",30,30],["C",90,-10,190,60,150,120],["C",120,150,20,140,30,30],["Z"]]}', 9304, (75.61, 92.6)),  # noqa: E501
]


@pytest.mark.parametrize(
    "obj_json, area, centroid", FABRIC_RENDERED,
    ids=[f"{i}-{json.loads(o)['type']}" for i, (o, _, _) in enumerate(FABRIC_RENDERED)],
)
def test_matches_fabric_rendering(obj_json, area, centroid):
    mask = rasterize([json.loads(obj_json)], image_shape=(160, 200))
    assert abs(int(mask.sum()) - area) <= 0.012 * area
    assert np.allclose(np.argwhere(mask).mean(0), centroid, atol=0.3)


# --- bad input --------------------------------------------------------------------------------


def test_unsupported_type_names_what_is_accepted():
    with pytest.raises(UnsupportedShapeError, match=r"type 'Image'; accepted: rect, .*polygon"):
        rasterize([{"type": "Image"}], image_shape=(10, 10))


def test_partial_circle_and_relative_path_commands_are_refused():
    with pytest.raises(UnsupportedShapeError, match="arc"):
        rasterize([{"type": "Circle", "radius": 3, "endAngle": 90}], image_shape=(10, 10))
    with pytest.raises(UnsupportedShapeError, match="path command"):
        rasterize([{"type": "Path", "path": [["m", 1, 1], ["l", 2, 2]]}], image_shape=(10, 10))


@pytest.mark.parametrize("shape", [(0, 5), (5,), "ab", (2.5, 3), None])
def test_bad_image_shape(shape):
    with pytest.raises(MaskError, match="image_shape"):
        rasterize([], image_shape=shape)


def test_bad_fit_json_and_labels():
    with pytest.raises(MaskError, match=r"background_fit\['scale_x'\]=0"):
        rasterize([], image_shape=(5, 5), background_fit={"scale_x": 0, "scale_y": 1, "offset_x": 0, "offset_y": 0})
    with pytest.raises(MaskError, match="does not parse"):
        canvas_objects("{not json")
    with pytest.raises(MaskError, match="object 0"):
        canvas_objects([{"left": 1}])
    with pytest.raises(MaskError, match="2 labels for 1"):
        region_masks([rect(0, 0, 1, 1)], image_shape=(5, 5), labels=["a", "b"])
    with pytest.raises(MaskError, match="left='3'"):
        rasterize([rect("3", 0, 1, 1)], image_shape=(5, 5))
