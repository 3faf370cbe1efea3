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
