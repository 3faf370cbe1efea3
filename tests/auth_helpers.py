"""Logging a user in for tests: an account in the test database, then the session state the login leaves.

AppTest (page tests that run ``app.py`` or a page file)::

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name="Dr A", role="sme")          # before at.run()
    at.run()

Browser tests: :func:`make_user` before the server starts, then :func:`browser_login` on the page.
"""

from __future__ import annotations

import time

from cxr_core import auth, storage
from cxr_core.config import get_settings
from ui.auth import LAST_SEEN_KEY, USER_KEY

#: The password tests give every account they create (the rules want at least 12 characters).
PASSWORD = "correct horse battery staple"


def make_user(engine_url: str | None = None, name: str = "tester", role: str = "admin",
              password: str = PASSWORD) -> auth.User:
    """The account ``name`` with ``role`` and ``password`` in the database at ``engine_url``
    (default: the one the app uses, ``CXR_DATABASE_URL`` or the test data folder), created or updated."""
    engine = storage.make_engine(engine_url or get_settings().database_url)
    try:
        with storage.session_factory(engine).begin() as s:
            existing = next((u for u in auth.list_users(s) if u.name == name), None)
            if existing is None:
                return auth.create_user(s, name, role, password)
            if existing.role != role:
                auth.set_role(s, name, role)
            auth.reset_password(s, name, password)
            return next(u for u in auth.list_users(s) if u.name == name)
    finally:
        engine.dispose()


def login(at, engine_url: str | None = None, name: str = "tester", role: str = "admin") -> auth.User:
    """Log ``name`` (created with ``role`` if needed) into the AppTest ``at``, as the login form would:
    the name under ``ui.auth.USER_KEY`` and the time of the last activity. Call before ``at.run()``."""
    user = make_user(engine_url, name, role)
    at.session_state[USER_KEY] = user.name
    at.session_state[LAST_SEEN_KEY] = time.time()
    return user


def browser_login(page, name: str, password: str = PASSWORD, timeout_ms: float = 180_000) -> None:
    """Fill the login form in a Playwright page and wait until the sidebar shows **Log out**."""
    page.get_by_label("User name").fill(name, timeout=timeout_ms)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("button", name="Log out").wait_for(timeout=timeout_ms)
