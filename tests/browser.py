"""Real-browser test helpers: ``streamlit run`` on a free local port, and Debian's chromium via Playwright.

Playwright never downloads a browser here: it drives ``/usr/bin/chromium`` (``apt-get install chromium``;
``.ci/run`` installs it). Tests using :func:`chromium_page` skip, with the reason, when it is absent.

Example::

    with streamlit_server(REPO / "app.py", env={"CXR_WEIGHTS_DIR": str(weights)}) as url, chromium_page() as page:
        page.goto(url)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))

#: Flags for headless chromium in a container (no sandbox, no GPU, no background traffic).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Poll ``url/_stcore/health`` until it answers "ok"; fail with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with code {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"streamlit did not become healthy within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def streamlit_server(app: Path, *, env: dict[str, str] | None = None, log_dir: Path | None = None,
                     timeout: float = 120) -> Iterator[str]:
    """Run ``streamlit run app`` headless on a free port; yield its URL; stop it (and only it) afterwards.

    Output goes to ``log_dir/streamlit.log`` (shown when the server fails to start).
    """
    port = free_port()
    log = Path(log_dir or app.parent) / "streamlit.log"
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
        "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=app.parent, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout, log)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and nothing else
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def require_chromium() -> None:
    """Skip the calling test, saying why, when Debian's chromium is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM}: install Debian's package (apt-get install chromium), "
                    "as .ci/run does, to run the real-browser tests")


@contextlib.contextmanager
def chromium_page(viewport: dict | None = None) -> Iterator:
    """A Playwright page in headless Debian chromium (skips when chromium is absent)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport or {"width": 1400, "height": 1100})
            yield page
        finally:
            browser.close()


# --- waiting for Streamlit, and drawing on streamlit-drawable-canvas with the real mouse -------------------------


def settle(page, quiet: float = 1.5, timeout: float = 180) -> None:
    """Wait until the app has not been running a script for ``quiet`` seconds (reruns are asynchronous)."""
    running = page.locator('[data-testid^="stStatusWidgetRunning"]')
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < quiet:
        if running.count():
            idle_since = time.monotonic()
        if time.monotonic() > deadline:
            pytest.fail(f"the app kept running for longer than {timeout:.0f} s")
        time.sleep(0.1)


class CanvasPen:
    """Draws on the page's drawable canvas with the real mouse, as each tool of streamlit-drawable-canvas 0.13 wants.

    Points are CSS pixels from the canvas's top-left corner; the canvas's bounding box is read
    again for every mark, so a canvas that moved (or was resized with the window) is still hit.
    """

    def __init__(self, page, selector: str = "canvas.upper-canvas") -> None:
        self.page = page
        self.canvas = page.locator(selector).first

    def box(self, timeout: float = 180) -> dict:
        """The canvas's bounding box on the page, once it is laid out (a rerun can briefly remount it)."""
        deadline = time.monotonic() + timeout
        while True:
            self.canvas.wait_for(timeout=timeout * 1000)
            box = self.canvas.bounding_box()
            if box is not None and box["width"] > 0:
                return box
            if time.monotonic() > deadline:
                pytest.fail(f"the drawing canvas was not laid out on the page within {timeout:.0f} s")
            time.sleep(0.2)

    def _at(self, box: dict, x: float, y: float) -> tuple[int, int]:
        """The page pixel for canvas point (x, y): whole pixels, as the browser reports mouse positions."""
        return round(box["x"] + x), round(box["y"] + y)

    def _drawn(self, box: dict, pages) -> list[tuple[float, float]]:
        return [(px - box["x"], py - box["y"]) for px, py in pages]

    def polygon(self, points) -> list[tuple[float, float]]:
        """Polygon tool: click each corner, then the first corner again (its handle) to close the shape.

        Returns the corners where the mouse clicked, in CSS pixels from the canvas's corner (within
        half a pixel of ``points``: the mouse moves by whole page pixels); the same for every tool.
        """
        box = self.box()
        pages = [self._at(box, x, y) for x, y in points]
        for px, py in [*pages, pages[0]]:
            self.page.mouse.click(px, py)
        return self._drawn(box, pages)

    def drag(self, start, end, steps: int = 12) -> list[tuple[float, float]]:
        """Rectangle tool (corner to corner) or circle tool (diameter from press to release): one drag."""
        box = self.box()
        pages = [self._at(box, *start), self._at(box, *end)]
        self.page.mouse.move(*pages[0])
        self.page.mouse.down()
        self.page.mouse.move(*pages[1], steps=steps)
        self.page.mouse.up()
        return self._drawn(box, pages)

    def freehand(self, points) -> list[tuple[float, float]]:
        """Freehand tool: press at the first point, pass through every point in turn, release at the last."""
        box = self.box()
        pages = [self._at(box, x, y) for x, y in points]
        self.page.mouse.move(*pages[0])
        self.page.mouse.down()
        for px, py in pages[1:]:
            self.page.mouse.move(px, py)
        self.page.mouse.up()
        return self._drawn(box, pages)

    def colours(self, points, radius: int = 3) -> list[list[tuple[int, int, int]]]:
        """RGB of the marks layer (transparent black where nothing is drawn) around each point (CSS pixels).

        Each point gives the pixels of a square of ``radius`` around it; none while the canvas is not laid out.
        """
        return self.canvas.locator("xpath=..").locator("canvas.lower-canvas").first.evaluate(
            """(c, [pts, r]) => {
                const ctx = c.getContext('2d'), shown = c.getBoundingClientRect().width;
                if (!shown || !c.width) return pts.map(() => []);
                const k = c.width / shown;
                return pts.map(([x, y]) => {
                    const d = ctx.getImageData(Math.round((x - r) * k), Math.round((y - r) * k),
                                               Math.round((2 * r + 1) * k), Math.round((2 * r + 1) * k)).data;
                    const out = [];
                    for (let i = 0; i < d.length; i += 4) out.push([d[i], d[i + 1], d[i + 2]]);
                    return out;
                });
            }""",
            [[list(p) for p in points], radius],
        )

    def shows_colour(self, point, rgb, tolerance: int = 40) -> bool:
        """Whether a pixel of colour ``rgb`` (e.g. a finding's stroke) is drawn within 3 CSS pixels of ``point``."""
        return any(max(abs(a - b) for a, b in zip(px, rgb)) <= tolerance for px in self.colours([point])[0])


def sole(locator, timeout: float = 180):
    """``locator`` once exactly one element matches it (a rerun can briefly show an old copy beside the new one)."""
    deadline = time.monotonic() + timeout
    while locator.count() != 1:
        if time.monotonic() > deadline:
            pytest.fail(f"{locator} matched {locator.count()} elements for {timeout:.0f} s; expected one")
        time.sleep(0.2)
    return locator


@contextlib.contextmanager
def screenshot_on_failure(page, path: Path) -> Iterator[None]:
    """Save a full-page screenshot to ``path`` when the block fails, so the page can be seen afterwards."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(path), full_page=True)
        raise
