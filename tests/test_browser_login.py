"""Logging in with a real browser: headless Debian chromium against ``streamlit run app.py``.

- Local accounts: a fresh server with no administrator; the first request goes straight to a page's
  address and gets only the first-run form; the setup code is read from the server's log, the
  administrator is created, logs out, a reviewer logs in and sees only the reviewer's pages, and the
  page left alone logs itself out after the idle timeout.
- Single sign-on: a real OpenID provider on localhost (``oidc-provider-mock``) issues the ID token;
  ``st.login`` / ``st.user`` take it, the role comes from the mapped ``groups`` claim, an identity
  with no mapped group is refused, and Log out ends the session at the provider.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

import pytest

from auth_helpers import PASSWORD, browser_login, make_user
from browser import chromium_page, require_chromium, screenshot_on_failure, settle, streamlit_server
from conftest import REPO

pytestmark = pytest.mark.browser

WAIT_MS = 240_000  # a cold server on 2 shared cores


def setup_code_from_log(log: Path, timeout: float = 240) -> str:
    """The first-administrator code the server wrote to its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(r"setup code: (\S+)", log.read_text(errors="replace")) if log.exists() else []
        if found:
            assert len(set(found)) == 1, found  # one code per server process
            return found[0]
        time.sleep(0.5)
    pytest.fail(f"no setup code in the server log within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def close_page_not_found(page) -> None:
    """Close Streamlit's "Page not found" dialog (a page's address the navigation does not list)."""
    page.get_by_text("Page not found").wait_for(timeout=WAIT_MS)
    page.keyboard.press("Escape")
    page.get_by_text("Page not found").wait_for(state="hidden", timeout=WAIT_MS)


def nav_links(page) -> list[str]:
    """The titles of the pages the sidebar lists (each link's text ends with the title, after its icon's name)."""
    return [t.strip().splitlines()[-1] for t in page.locator("[data-testid='stSidebarNav'] a").all_inner_texts()]


def sidebar(page) -> str:
    return page.locator("[data-testid='stSidebar']").inner_text()


def test_first_admin_then_local_logins(tmp_path):
    require_chromium()
    url_db = f"sqlite:///{tmp_path / 'annotations.db'}"
    make_user(url_db, "Dr Rev", "reviewer")  # an account exists, but no administrator yet
    env = {"CXR_DATABASE_URL": url_db, "CXR_DATA_DIR": str(tmp_path / "data"), "CXR_AUTH": "local",
           "CXR_WEIGHTS_DIR": str(tmp_path / "weights"), "CXR_IDLE_TIMEOUT_MIN": "1"}
    with streamlit_server(REPO / "app.py", env=env, log_dir=tmp_path) as url, chromium_page() as page, \
            screenshot_on_failure(page, tmp_path / "failure.png"):
        page.goto(f"{url}/sessions")  # the server's first run: a page's address, not the app's
        page.get_by_label("Setup code").wait_for(timeout=WAIT_MS)
        close_page_not_found(page)  # the first-run form stands in for the page asked for
        settle(page)
        assert not nav_links(page)
        assert "Reading sessions" not in page.inner_text("body")
        code = setup_code_from_log(tmp_path / "streamlit.log")

        page.get_by_label("Setup code").fill(code)
        page.get_by_label("Administrator name").fill("Ada Admin")
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_label("Password again").fill(PASSWORD)
        page.get_by_role("button", name="Create administrator").click()
        page.get_by_role("button", name="Log out").wait_for(timeout=WAIT_MS)
        settle(page)
        assert "Ada Admin" in sidebar(page) and "Role: admin" in sidebar(page)
        assert "Reading sessions (admin)" in nav_links(page)

        page.get_by_role("button", name="Log out").click()
        page.get_by_text("You are logged out.").wait_for(timeout=WAIT_MS)
        settle(page)
        assert page.get_by_label("User name").is_visible() and not nav_links(page)

        page.get_by_label("User name").fill("Dr Rev")
        page.get_by_label("Password", exact=True).fill("not the right password")
        page.get_by_role("button", name="Log in").click()
        page.get_by_text("User name or password is wrong.").wait_for(timeout=WAIT_MS)

        browser_login(page, "Dr Rev", timeout_ms=WAIT_MS)
        settle(page)
        assert "Role: reviewer" in sidebar(page)
        assert nav_links(page) == ["Review X-rays", "Models"]

        # An administrator's page by its address: a new browser session (logged out), then not served
        page.goto(f"{url}/sessions")
        page.get_by_label("User name").wait_for(timeout=WAIT_MS)
        close_page_not_found(page)
        browser_login(page, "Dr Rev", timeout_ms=WAIT_MS)
        settle(page)
        assert nav_links(page) == ["Review X-rays", "Models"]
        assert "Reading sessions" not in page.locator("[data-testid='stMain']").inner_text()

        # Left alone past the idle timeout (1 minute here), the open page logs itself out
        page.get_by_text("1 minute without activity").wait_for(timeout=180_000)
        page.get_by_label("User name").wait_for(timeout=WAIT_MS)  # the form follows the notice (a busy server: later)
        settle(page)
        assert page.get_by_label("User name").is_visible() and not nav_links(page)


def test_single_sign_on_through_a_local_openid_provider(tmp_path, monkeypatch):
    require_chromium()
    from oidc_provider_mock import User, run_server_in_thread

    users = [User(sub="dr-admin", claims={"email": "dr.admin@hospital.test", "name": "Dr Admin",
                                          "groups": ["staff", "cxr-admins"]}),
             User(sub="visitor", claims={"email": "visitor@hospital.test", "groups": ["staff"]})]
    with run_server_in_thread(user_claims=users) as idp:
        issuer = f"http://localhost:{idp.server_port}"
        secrets_file = tmp_path / "secrets.toml"
        secrets_file.write_text(
            "[auth]\n"
            'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'  # Streamlit fills in its port
            f'cookie_secret = "{secrets.token_hex(32)}"\n'
            'client_id = "cxr-review"\n'
            'client_secret = "any secret: the mock accepts every client"\n'
            f'server_metadata_url = "{issuer}/.well-known/openid-configuration"\n')
        env = {"CXR_DATABASE_URL": f"sqlite:///{tmp_path / 'annotations.db'}", "CXR_DATA_DIR": str(tmp_path / "data"),
               "CXR_WEIGHTS_DIR": str(tmp_path / "weights"), "CXR_AUTH": "oidc", "CXR_OIDC_ROLE_CLAIM": "groups",
               "CXR_OIDC_ROLE_MAP": "cxr-admins=admin,cxr-readers=reviewer",
               "STREAMLIT_SECRETS_FILES": str(secrets_file)}
        with streamlit_server(REPO / "app.py", env=env, log_dir=tmp_path) as url, chromium_page() as page, \
                screenshot_on_failure(page, tmp_path / "failure.png"):
            page.goto(url)
            page.get_by_role("button", name="Log in with single sign-on").click(timeout=WAIT_MS)
            page.get_by_role("button", name="dr-admin").click(timeout=WAIT_MS)  # the provider's login page
            page.get_by_role("button", name="Log out").wait_for(timeout=WAIT_MS)
            settle(page)
            assert "dr.admin@hospital.test" in sidebar(page) and "Role: admin" in sidebar(page)
            assert "Reading sessions (admin)" in nav_links(page)

            page.get_by_role("button", name="Log out").click()
            page.get_by_role("button", name="End session").click(timeout=WAIT_MS)  # the provider's logout
            page.get_by_role("button", name="Log in with single sign-on").click(timeout=WAIT_MS)
            page.get_by_role("button", name="visitor").click(timeout=WAIT_MS)
            page.get_by_text("carries no role for CXR Review").wait_for(timeout=WAIT_MS)
            settle(page)
            assert not nav_links(page)
            assert "not diagnoses" not in page.inner_text("body")
