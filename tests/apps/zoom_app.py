"""Test app for cxr_core.annotation.canvas_view: a zoomed canvas over a synthetic film, marks read back in the full frame.

Query parameters ``zoom``, ``x``, ``y`` choose the view, ``a`` and ``b`` two bright blocks on the film
(``row,col,rows,cols``). A stored
full-frame rectangle round block B is drawn into the view with ``to_view``; the reader draws round
block A. Every mark is brought back with ``from_view`` and measured on the film (``OBJ`` lines).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402
from streamlit_drawable_canvas import st_canvas  # noqa: E402

from cxr_core.annotation.canvas_view import View, frame_fit, from_view, to_view, view_picture  # noqa: E402
from cxr_core.annotation.masks import region_masks  # noqa: E402

FILM_SHAPE = (419, 512)
SIZE = 600
q = st.query_params
BLOCK_A = tuple(int(v) for v in q.get("a", "190,230,30,30").split(","))  # the reader draws round this one
BLOCK_B = tuple(int(v) for v in q.get("b", "225,272,20,24").split(","))  # the stored rectangle is round this one


def stored_rect() -> dict:
    """A rect-tool rectangle (uniform 3 px stroke, left/top on the stroke's outer corner) round block B, full frame."""
    fit = frame_fit(FILM_SHAPE, SIZE, SIZE)
    r, c, h, w = BLOCK_B
    x0, y0 = fit["offset_x"] + c * fit["scale_x"], fit["offset_y"] + r * fit["scale_y"]
    return {"type": "rect", "left": x0 - 1.5, "top": y0 - 1.5, "width": w * fit["scale_x"],
            "height": h * fit["scale_y"], "originX": "left", "originY": "top", "strokeWidth": 3,
            "strokeUniform": True, "stroke": "#ff0000", "fill": "rgba(255, 0, 0, 0.2)"}


film = np.zeros(FILM_SHAPE, np.float32)
for r, c, h, w in (BLOCK_A, BLOCK_B):
    film[r:r + h, c:c + w] = 1.0
view = View(int(q.get("zoom", 2)), float(q.get("x", 0.5)), float(q.get("y", 0.5)))
result = st_canvas(
    background_image=view_picture(film, view, SIZE, SIZE), background_image_fit="contain", width=SIZE,
    height=SIZE, drawing_mode="rect", stroke_width=3, stroke_color="#00ff00", fill_color="rgba(0, 255, 0, 0.2)",
    initial_drawing=to_view({"objects": [stored_rect()]}, view, SIZE, SIZE, film_shape=FILM_SHAPE), key="zoomed",
)
full = from_view(result.json_data or {"objects": []}, view, SIZE, SIZE, film_shape=FILM_SHAPE)
masks = region_masks(full, image_shape=FILM_SHAPE, background_fit=frame_fit(FILM_SHAPE, SIZE, SIZE))
st.text(f"OBJECTS {len(masks)}")
for m in masks:
    rc = np.argwhere(m.mask)
    box = " ".join(map(str, [*rc.min(0), *rc.max(0)])) if len(rc) else "- - - -"
    st.text(f"OBJ {m.index} {box} {m.area}")
