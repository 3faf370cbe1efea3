"""The review page in a real browser: headless Debian chromium against ``streamlit run app.py``.

Uploads a bundled sample (or a fixture film when no samples are installed) to the demo model (the tiny test
models when it is not installed), waits for the Grad-CAM overlay and its legend, zooms in 2x, screenshots the
page into the test's temp dir, and prints the seconds from upload to overlay (issue 17): cold (TensorFlow import,
model load and CAM tracing included) and warm (a second film on the running server). No timing assertion.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from auth_helpers import browser_login, make_user
from browser import chromium_page, require_chromium, streamlit_server
from conftest import FIXTURES, REPO

pytestmark = pytest.mark.browser

COLD_TIMEOUT_MS = 400_000  # 2 shared cores: TF import + first trace can take minutes under load


def sample_film() -> tuple[str, bytes]:
    folder = REPO / "data" / "samples"
    try:
        first = json.loads((folder / "samples.json").read_text())[0]["file"]
        return first, (folder / first).read_bytes()
    except (OSError, ValueError, IndexError, KeyError):
        name = "covid_hannover_b343e657.png"
        return name, (FIXTURES / "cxr" / name).read_bytes()


DEMO = REPO / "weights" / "demo-efficientnetv2b0" / "card.json"

def second_film(first: str) -> tuple[str, bytes]:
    """Another film for the warm measurement: a second bundled sample, or a fixture film."""
    folder = REPO / "data" / "samples"
    try:
        names = [s["file"] for s in json.loads((folder / "samples.json").read_text())]
        source = "_".join(first.split("_")[:2])  # e.g. covid_hannover: a film like the first, surely analysed
        other = next((n for n in names if n != first and n.startswith(source)), None) or next(
            n for n in names if n != first)
        return other, (folder / other).read_bytes()
    except (OSError, ValueError, StopIteration, KeyError):
        name = "normal_kermany224_IM-0001-0001.png"
        return name, (FIXTURES / "cxr" / name).read_bytes()


def test_upload_a_sample_and_see_the_overlay(tiny_registry, tmp_path, record_property):
    require_chromium()
    name, data = sample_film()
    weights = DEMO.parent.parent if DEMO.exists() else tiny_registry
    model = "demo model" if DEMO.exists() else "tiny test models"
    url = f"sqlite:///{tmp_path / 'data' / 'annotations.db'}"
    make_user(url, "Admin", "admin")  # an administrator exists: the login form, not the first-run one
    make_user(url, "Dr R", "reviewer")  # a reviewer may open the review and models pages
    env = {"CXR_WEIGHTS_DIR": str(weights), "CXR_DATA_DIR": str(tmp_path / "data"), "CXR_DATABASE_URL": url,
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    tall = {"width": 1400, "height": 2600}  # Streamlit scrolls inside the page: a tall window shows it all
    with streamlit_server(REPO / "app.py", env=env, log_dir=tmp_path) as server, chromium_page(tall) as page:
        page.goto(server)
        browser_login(page, "Dr R")
        page.get_by_text("Research tool.").wait_for(timeout=120_000)
        page.get_by_text("Upload one or more chest X-rays").wait_for(timeout=60_000)

        started = time.monotonic()
        upload = {"name": name, "mimeType": "image/png", "buffer": data}
        page.locator("input[type=file]").set_input_files(files=[upload])
        caption = page.get_by_text(re.compile(r"^Grad-CAM for .+ overlay$"))
        caption.wait_for(timeout=COLD_TIMEOUT_MS)
        figure = page.locator("[data-testid='stImage']").filter(has=caption)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=figure.locator("img").element_handle(), timeout=60_000)
        seconds = time.monotonic() - started

        page.get_by_text("Top model score:").wait_for(timeout=60_000)
        page.get_by_text(re.compile(r"Scores by (TensorFlow|OpenVINO), (float32|bfloat16)")).first.wait_for(
            timeout=60_000)  # the engine behind the scores (issue 17)
        page.locator("[data-testid='stPlotlyChart'] .main-svg").first.wait_for(timeout=60_000)  # the score chart drew
        page.wait_for_timeout(1000)  # let plotly finish its transition before the picture
        shot = tmp_path / "review.png"
        page.screenshot(path=str(shot), full_page=True)
        legend = page.locator("[data-testid='stImage']").filter(has=page.get_by_text("relative within this film"))
        assert legend.locator("img").first.is_visible()
        film_box = figure.locator("img").bounding_box()
        chart_box = page.locator("[data-testid='stPlotlyChart']").first.bounding_box()
        assert film_box["width"] > 2 * chart_box["width"]  # the film, not the side column, gets the width

        # warm: a second film on the running server (model loaded, engine traced), as a reader's next film
        page.locator("[data-testid='stFileChipDeleteBtn']").first.click()  # the uploader adds files: drop the first
        page.get_by_text("Upload one or more chest X-rays").wait_for(timeout=120_000)
        other, other_data = second_film(name)
        started = time.monotonic()
        page.locator("input[type=file]").set_input_files(files=[{"name": other, "mimeType": "image/png",
                                                                  "buffer": other_data}])
        caption.wait_for(timeout=COLD_TIMEOUT_MS)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=figure.locator("img").element_handle(timeout=COLD_TIMEOUT_MS),
                               timeout=COLD_TIMEOUT_MS)
        warm_seconds = time.monotonic() - started

        zoom = page.locator("[data-testid='stButtonGroup']").filter(has_text="Whole film")  # the zoom control
        zoom.get_by_text("2x", exact=True).click()
        page.get_by_text(re.compile(r"^Grad-CAM for .+ overlay, 2x zoom$")).wait_for(timeout=120_000)
        page.get_by_text("Zoom centre, across (%)").wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "review_zoom.png"), full_page=True)

        page.get_by_role("link", name="Models").click()
        page.get_by_text("Checksum verified").first.wait_for(timeout=60_000)
        assert page.get_by_text("Research tool.").is_visible()  # the banner is on every page
        page.screenshot(path=str(tmp_path / "models.png"), full_page=True)

    (tmp_path / "upload_to_overlay_seconds.txt").write_text(f"cold {seconds:.2f}\nwarm {warm_seconds:.2f}\n")
    record_property("upload_to_overlay_seconds", round(seconds, 2))
    record_property("upload_to_overlay_seconds_warm", round(warm_seconds, 2))
    engine = "CXR_BACKEND=" + os.environ.get("CXR_BACKEND", "auto")
    print(f"\nupload to overlay ({model}, {engine}): cold server {seconds:.1f} s, warm server {warm_seconds:.1f} s; "
          f"screenshots in {tmp_path}")
    assert shot.stat().st_size > 10_000
