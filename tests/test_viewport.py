"""ui.viewport in a real Chromium: the window size and the probe's place reach Python, and a canvas fits above the fold.

Runs ``streamlit run tests/apps/viewport_app.py`` on a free port and drives Debian's
``/usr/bin/chromium`` with Playwright at the two screens the issue names, 1366 x 768 and
1920 x 1080. The app shows what Python received (``PAGE``/``COLUMN`` lines) and sizes a real
``st_canvas`` with :func:`cxr_core.annotation.canvas_view.canvas_size` from the space below the column's probe.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from browser import chromium_page, streamlit_server

pytestmark = pytest.mark.browser
APP = Path(__file__).parent / "apps" / "viewport_app.py"
WAIT_MS = 120_000  # 2 shared cores: a rerun can take seconds


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with streamlit_server(APP, log_dir=tmp_path_factory.mktemp("viewport")) as url:
        yield url


def reported(page, name: str, width: int, height: int) -> tuple[int, int, int, int]:
    """Wait until Python shows ``name`` for a ``width x height`` window; (width, height, top, element_width)."""
    line = page.get_by_text(re.compile(rf"^{name} {width} {height} \d+ \d+$"))
    line.wait_for(timeout=WAIT_MS)
    return tuple(int(v) for v in line.inner_text().split()[1:])  # type: ignore[return-value]


def probe_boxes(page) -> list[dict]:
    """Each probe's box, and its Streamlit element container's height, measured in the page."""
    return page.evaluate("""() => [...document.querySelectorAll('.cxr-viewport-probe')].map((p) => {
        const box = p.getBoundingClientRect();
        const holder = p.closest('[data-testid="stElementContainer"]');
        return {top: box.top, width: box.width, height: box.height, holder: holder.getBoundingClientRect().height};
    })""")


def canvas_box(page) -> dict:
    canvas = page.locator("canvas").first
    canvas.wait_for(timeout=WAIT_MS)
    return canvas.bounding_box()


@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080)])
def test_window_size_and_probe_place_reach_python_and_the_canvas_fits(app_url, size):
    width, height = size
    with chromium_page({"width": width, "height": height}) as page:
        page.goto(app_url)
        page_vp = reported(page, "PAGE", width, height)
        col_vp = reported(page, "COLUMN", width, height)
        page.wait_for_timeout(500)  # let the canvas take its final size
        boxes = probe_boxes(page)
        canvas = canvas_box(page)
        inner = page.evaluate("[window.innerWidth, window.innerHeight]")

    assert list(page_vp[:2]) == list(col_vp[:2]) == inner == [width, height]
    for vp, box in zip((page_vp, col_vp), boxes):
        assert abs(vp[2] - box["top"]) <= 1 and abs(vp[3] - box["width"]) <= 1
        assert box["height"] == 0 and box["holder"] == 0  # draws nothing
    assert col_vp[3] < page_vp[3] < width  # the column probe knows its column is narrower than the page
    # The canvas sized from the space below the column probe starts below it and ends above the fold.
    assert canvas["y"] >= col_vp[2] and canvas["y"] + canvas["height"] <= height
    assert canvas["width"] <= col_vp[3] and canvas["height"] >= 320
    assert canvas["y"] + canvas["height"] >= height - 60  # and uses the height there is


def test_resizing_the_window_reports_again_without_a_reload(app_url):
    with chromium_page({"width": 1366, "height": 768}) as page:
        page.goto(app_url)
        small = reported(page, "COLUMN", 1366, 768)
        small_canvas = canvas_box(page)
        page.set_viewport_size({"width": 1920, "height": 1080})
        large = reported(page, "COLUMN", 1920, 1080)
        page.wait_for_timeout(1000)
        large_canvas = canvas_box(page)
        # A short window scrolls; the top reported stays the top in the page, not on screen.
        page.set_viewport_size({"width": 1366, "height": 480})
        reported(page, "COLUMN", 1366, 480)
        page.mouse.move(300, 300)
        page.mouse.wheel(0, 150)
        page.wait_for_timeout(500)
        scrolled_top = probe_boxes(page)[1]["top"]
        page.set_viewport_size({"width": 1300, "height": 480})
        after_scroll = reported(page, "COLUMN", 1300, 480)

    assert large[3] > small[3] and large_canvas["height"] > small_canvas["height"]
    assert large_canvas["y"] + large_canvas["height"] <= 1080
    assert scrolled_top < small[2] - 50  # the page did scroll
    assert abs(after_scroll[2] - small[2]) <= 1


def test_before_the_browser_reports_python_gets_none_then_keeps_the_last_report():
    # Without a browser (AppTest runs no JavaScript) nothing is measured yet; the canvas waits.
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert [t.value for t in at.text] == ["PAGE none", "COLUMN none"]
    # A probe remounted after Streamlit dropped its state answers with the last report it had.
    at.session_state["page_probe__last"] = {"width": 1366, "height": 768, "top": 185, "element_width": 1206,
                                            "pixel_ratio": 2}
    at.run()
    assert at.text[0].value == "PAGE 1366 768 185 1206"


# --- a zoomed canvas in the browser: what Fabric returns, brought back, lands on the film ------------------------

ZOOM_APP = Path(__file__).parent / "apps" / "zoom_app.py"
FILM_SHAPE = (419, 512)  # the zoom app's film
BLOCK_A = (190, 230, 30, 30)  # row, col, rows, cols: the reader draws round this block
BLOCK_B = (225, 272, 20, 24)  # the app's stored rectangle is round this one


@pytest.fixture(scope="module")
def zoom_url(tmp_path_factory):
    with streamlit_server(ZOOM_APP, log_dir=tmp_path_factory.mktemp("zoom")) as url:
        yield url


def marks(page, count: int) -> list[list[int]]:
    """Wait for ``count`` marks measured in the full frame; each as [row0, col0, row1, col1, area] on the film."""
    page.get_by_text(f"OBJECTS {count}", exact=True).wait_for(timeout=WAIT_MS)
    page.locator('[data-testid="stText"]').nth(count).wait_for(timeout=WAIT_MS)  # after the OBJECTS line
    lines = [t for t in page.locator('[data-testid="stText"]').all_inner_texts() if t.startswith("OBJ ")]
    return [[int(v) for v in line.split()[2:]] for line in sorted(lines)]


@pytest.mark.parametrize("zoom, x, y", [(2, 0.45, 0.5), (4, 0.5, 0.5)])
def test_marks_drawn_in_a_zoomed_canvas_land_on_the_film_pixels_under_them(zoom_url, zoom, x, y):
    from cxr_core.annotation.canvas_view import View, frame_fit, view_transform

    fit = frame_fit(FILM_SHAPE, 600, 600)
    t = view_transform(View(zoom, x, y), FILM_SHAPE, 600, 600)

    def on_canvas(row: float, col: float) -> tuple[float, float]:
        return (t.scale * (fit["offset_x"] + col * fit["scale_x"]) + t.dx,
                t.scale * (fit["offset_y"] + row * fit["scale_y"]) + t.dy)

    with chromium_page({"width": 1000, "height": 900}) as page:
        blocks = "&".join(f"{n}={','.join(map(str, b))}" for n, b in (("a", BLOCK_A), ("b", BLOCK_B)))
        page.goto(f"{zoom_url}/?zoom={zoom}&x={x}&y={y}&{blocks}")
        stored = marks(page, 1)
        # The stored rectangle is drawn where block B shows in the zoomed picture (its red stroke on its left edge).
        r, c, h, w = BLOCK_B
        edge_x, edge_y = on_canvas(r + h / 2, c)
        lower = page.locator("canvas.dc-canvas.lower-canvas").first  # the marks' layer, over the picture's
        reds = lower.evaluate("""(cv, [x, y]) => {
            const k = cv.width / cv.clientWidth, d = cv.getContext('2d').getImageData(
                Math.round((x - 4) * k), Math.round((y - 1) * k), Math.round(9 * k), Math.round(3 * k)).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 180 && d[i + 1] < 90) n++; return n; }""",
                              [edge_x, edge_y])
        # The reader drags round block A in the zoomed view.
        r, c, h, w = BLOCK_A
        box = page.locator("canvas.upper-canvas").first.bounding_box()
        x0, y0 = on_canvas(r, c)
        x1, y1 = on_canvas(r + h, c + w)
        page.mouse.move(box["x"] + x0, box["y"] + y0)
        page.mouse.down()
        page.mouse.move(box["x"] + x1, box["y"] + y1, steps=12)
        page.mouse.up()
        both = marks(page, 2)

    r, c, h, w = BLOCK_B
    assert stored[0][:4] == [r, c, r + h - 1, c + w - 1] and abs(stored[0][4] - h * w) <= 1
    assert reds > 0
    assert both[0] == stored[0]  # Fabric kept the stored mark through the zoomed canvas exactly
    # The rect tool fills from 1.5 CSS px inside the mouse's corners (its stroke): under 1 film pixel at 2x.
    r, c, h, w = BLOCK_A
    assert max(abs(a - b) for a, b in zip(both[1][:4], [r, c, r + h - 1, c + w - 1])) <= 1
    assert abs(both[1][4] - h * w) <= 0.1 * h * w
