"""ui_viewport in a real Chromium: the window size and the probe's place reach Python, and a canvas fits above the fold.

Runs ``streamlit run tests/apps/viewport_app.py`` on a free port and drives Debian's
``/usr/bin/chromium`` with Playwright at the two screens the issue names, 1366 x 768 and
1920 x 1080. The app shows what Python received (``PAGE``/``COLUMN`` lines) and sizes a real
``st_canvas`` with :func:`cxr_core.canvas_view.canvas_size` from the space below the column's probe.
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
