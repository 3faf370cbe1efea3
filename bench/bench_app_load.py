"""N browser users upload one film each at once to the review page: time to the last overlay, errors, server time.

Starts ``streamlit run app.py`` on a free port with the demo model (``weights/``), logs a reviewer into N
headless Chromium pages (Debian's ``/usr/bin/chromium`` through Playwright, as ``tests/browser.py`` does), warms
the server with one upload (model load and engine set-up are not counted), then has every page upload a
different film at the same moment and waits for each page's Grad-CAM overlay (the picture loaded).

Printed per N: seconds to the last result, the median page, errors (an error box, an exception or a page that
gave no overlay in time) and the server time per film: wall (time to the last result / N: the server's cores are
the bottleneck, so films are served one after the other) and the server process's CPU seconds per film (user +
system, from ``/proc``: the figure that other load on a shared machine does not inflate). Each film is a bundled sample with one
pixel changed per page, so no film is served from another page's cache.

Run: ``python bench/bench_app_load.py [--n 1 8 16] [--app app.py]`` (``CXR_BACKEND`` picks the engine).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def films(n: int, offset: int) -> list[tuple[str, bytes]]:
    """``n`` distinct PNG films: the bundled samples in turn, each with one pixel changed (a new SHA-256)."""
    import numpy as np
    from PIL import Image

    folder = REPO / "data" / "samples"
    files = [s["file"] for s in json.loads((folder / "samples.json").read_text())]
    out = []
    for i in range(n):
        name = files[i % len(files)]
        with Image.open(folder / name) as im:
            pixels = np.array(im)
        flat = pixels.reshape(-1)
        flat[offset + i] = (int(flat[offset + i]) + 1) % 256 if pixels.dtype == np.uint8 else flat[offset + i] + 1
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append((f"{Path(name).stem}-{offset + i}.png", buf.getvalue()))
    return out


OVERLAY = re.compile(r"^Grad-CAM for .+ overlay$")


def _login(page, url: str) -> None:
    from auth_helpers import browser_login

    page.goto(url)
    browser_login(page, "Load Reviewer")
    page.get_by_text("Upload one or more chest X-rays").wait_for(timeout=300_000)


def _upload(page, film: tuple[str, bytes]) -> None:
    page.locator("input[type=file]").set_input_files(files=[{"name": film[0], "mimeType": "image/png",
                                                              "buffer": film[1]}])


def _overlay_shown(page, timeout_ms: float) -> None:
    caption = page.get_by_text(OVERLAY)
    caption.wait_for(timeout=timeout_ms)
    figure = page.locator("[data-testid='stImage']").filter(has=caption)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=figure.locator("img").element_handle(timeout=timeout_ms), timeout=timeout_ms)


def _errors(page) -> int:
    return page.locator("[data-testid='stException'], [data-testid='stAlertContentError']").count()


def server_pid(port: int) -> int | None:
    """The process serving ``port`` (``streamlit run ... --server.port PORT``), found in ``/proc``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"streamlit" in b" ".join(args) and b"--server.port" in args and \
                args[args.index(b"--server.port") + 1] == str(port).encode():
            return int(proc.name)
    return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds the process has used so far (all its threads); NaN when unknown."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(browser, url: str, n: int, offset: int, timeout_s: float) -> dict:
    """One round: n pages log in, then all upload at once; seconds until each page shows its overlay."""
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1600}) for _ in range(n)]
    pages = [c.new_page() for c in contexts]
    try:
        for page in pages:
            _login(page, url)
        batch = films(n, offset)
        pid = server_pid(int(url.rsplit(":", 1)[1]))
        cpu0 = cpu_seconds(pid)
        start = time.monotonic()
        for page, film in zip(pages, batch):
            _upload(page, film)
        done, errors = [], 0
        for page in pages:
            try:
                _overlay_shown(page, max(1.0, timeout_s - (time.monotonic() - start)) * 1000)
                done.append(time.monotonic() - start)
            except Exception as exc:  # noqa: BLE001 - a page without its overlay is an error of the round
                print(f"  page gave no overlay: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                errors += 1
            errors += _errors(page)
        last = max(done) if done else float("nan")
        cpu = cpu_seconds(pid) - cpu0
        return {"n": n, "last": last, "median": statistics.median(done) if done else float("nan"),
                "errors": errors, "per_film": last / n, "cpu_per_film": cpu / n}
    finally:
        for c in contexts:
            c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 8, 16], help="pages uploading at once, per round")
    parser.add_argument("--app", type=Path, default=REPO / "app.py", help="the app to serve (another checkout's)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a round may take")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from auth_helpers import make_user
    from browser import CHROMIUM, CHROMIUM_ARGS, streamlit_server

    with tempfile.TemporaryDirectory() as tmp:
        url_db = f"sqlite:///{Path(tmp) / 'annotations.db'}"
        env = {"CXR_WEIGHTS_DIR": str(REPO / "weights"), "CXR_DATA_DIR": str(Path(tmp) / "data"),
               "CXR_CACHE_DIR": str(REPO / "data" / "cache"), "CXR_DATABASE_URL": url_db,
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        os.environ.update({k: v for k, v in env.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
        make_user(url_db, "Admin", "admin")
        make_user(url_db, "Load Reviewer", "reviewer")
        print(f"app {args.app}; CXR_BACKEND={os.environ.get('CXR_BACKEND', 'auto')}; load {os.getloadavg()}")
        with streamlit_server(args.app.resolve(), env=env, log_dir=Path(tmp), timeout=300) as url, \
                sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            t0 = time.monotonic()
            warm = run(browser, url, 1, 0, args.timeout)
            print(f"warm-up (cold server: model load, engine set-up): {time.monotonic() - t0:.1f} s, "
                  f"{warm['errors']} errors")
            offset = 1
            for n in args.n:
                r = run(browser, url, n, offset, args.timeout)
                offset += n
                print(f"N={n:>2}: last result after {r['last']:6.1f} s (median page {r['median']:.1f} s), "
                      f"errors {r['errors']}, server time per film {r['per_film']:.2f} s wall "
                      f"({r['cpu_per_film']:.2f} s of server CPU); load {os.getloadavg()[0]:.1f}", flush=True)
            browser.close()


if __name__ == "__main__":
    main()
