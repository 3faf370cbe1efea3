"""Test app for ui.viewport: the probe in the page and in a column, and a canvas sized to the space below it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for ui.viewport and cxr_core

import streamlit as st  # noqa: E402
from streamlit_drawable_canvas import st_canvas  # noqa: E402

from cxr_core.annotation.canvas_view import canvas_size  # noqa: E402
from ui.viewport import viewport  # noqa: E402

st.set_page_config(page_title="viewport probe", layout="wide")
st.title("Viewport probe")
page = viewport("page_probe")
st.text("PAGE " + (f"{page.width} {page.height} {page.top} {page.element_width}" if page else "none"))
left, right = st.columns([2, 1])
with left:
    col = viewport("column_probe")
    if col is None:
        st.caption("The canvas appears once the browser has reported its size.")
    else:
        width, height = canvas_size(*col.space_below(), 512 / 419)
        st_canvas(width=width, height=height, background_color="#222", drawing_mode="rect", key="canvas")
right.text("COLUMN " + (f"{col.width} {col.height} {col.top} {col.element_width}" if col else "none"))
