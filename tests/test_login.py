"""Logging in to the app under AppTest (real app.py, real SQLite, real argon2 hashes).

Nobody logged in sees the login form and nothing else; a login shows the name, role and Log out in
the sidebar and only the pages the role may open; wrong passwords, the lockout, the idle timeout,
logging out, the first administrator's setup code and single sign-on (AppTest's ``user``).
Also the safe defaults the server starts with (.streamlit/config.toml, `make run`, .gitignore).
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
import tomllib

import pytest
from streamlit.testing.v1 import AppTest

from auth_helpers import PASSWORD, login, make_user
from conftest import REPO
from cxr_core import auth, storage
from cxr_core.config import get_settings
from ui.auth import LAST_SEEN_KEY, USER_KEY

TIMEOUT = 120  # the first run imports the pages' libraries; 2 cores are shared

#: Each page's file and title, by its action in cxr_core.auth.ACTIONS (as app.py registers them).
PAGE_FILES = {
    "page:review": ("pages/review.py", "Review X-rays"),
    "page:models": ("pages/models.py", "Models"),
    "page:annotate": ("pages/annotate.py", "Annotate"),
    "page:agreement": ("pages/agreement.py", "Heatmap agreement"),
    "page:audit": ("pages/audit.py", "Dataset audit"),
    "page:sessions": ("pages/sessions.py", "Reading sessions"),
    "page:users": ("pages/users.py", "Users"),
    "page:trail": ("pages/trail.py", "Audit trail"),
}


@pytest.fixture
def db_url(tmp_path, monkeypatch) -> str:
    """A fresh annotation database for this test, used by the app (CXR_DATABASE_URL) and the test."""
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    monkeypatch.setenv("CXR_AUTH", "local")
    return url


@pytest.fixture
def admin(db_url) -> auth.User:
    """An administrator exists, so the app asks for a login rather than the first-run setup code."""
    return make_user(db_url, "Ada Admin", "admin")


def app() -> AppTest:
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)


def widgets(at: AppTest) -> list[tuple[str, str]]:
    """(kind, label) of every input widget on the page and in the sidebar, buttons included."""
    kinds = ("text_input", "text_area", "number_input", "button", "checkbox", "toggle", "radio", "selectbox",
             "multiselect", "slider", "select_slider", "date_input", "time_input", "color_picker", "chat_input")
    found = [(kind, w.label) for kind in kinds for w in getattr(at, kind)]
    found += [(kind, w.label) for kind in ("file_uploader", "download_button") for w in at.get(kind)]
    return found


def texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def sidebar_texts(at: AppTest) -> list[str]:
    return [e.value for e in at.sidebar.get("text")] + [e.value for e in at.sidebar.caption]


def fill_login(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="auth_name").input(name)
    at.text_input(key="auth_password").input(password)
    next(b for b in at.button if b.label == "Log in").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def assert_login_form_only(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert widgets(at) == [("text_input", "User name"), ("text_input", "Password"), ("button", "Log in")]
    assert at.text_input(key="auth_password").proto.type == at.text_input(key="auth_password").proto.PASSWORD
    assert not at.sidebar.children or not any(sidebar_texts(at))
    assert not any("not diagnoses" in w for w in texts(at, "warning"))  # the app's banner is not shown either
    for path, _ in PAGE_FILES.values():  # st.navigation lists no page of the app
        with pytest.raises(ValueError, match=r"Known pages: \['Log in'\]"):
            at.switch_page(path)


def events(db_url: str, **filters) -> list:
    engine = storage.make_engine(db_url)
    try:
        with storage.read_transaction(storage.session_factory(engine)) as s:
            return auth.events(s, **filters)
    finally:
        engine.dispose()


# --- nobody logged in --------------------------------------------------------------------------------


def test_nobody_logged_in_sees_only_the_login_form(admin):
    at = app().run()
    assert_login_form_only(at)
    assert USER_KEY not in at.session_state


def test_a_page_run_on_its_own_shows_the_login_form_too(admin):
    at = AppTest.from_file(str(REPO / "pages" / "sessions.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert widgets(at) == [("text_input", "User name"), ("text_input", "Password"), ("button", "Log in")]
    assert not any("Reading sessions" in t for t in texts(at, "title"))


# --- logging in ---------------------------------------------------------------------------------------


def test_good_login_shows_name_role_and_log_out(admin, db_url):
    make_user(db_url, "Dr Rev", "reviewer")
    at = fill_login(app().run(), "Dr Rev", PASSWORD)
    assert sidebar_texts(at)[:2] == ["Dr Rev", "Role: reviewer"]
    assert [b.label for b in at.sidebar.button] == ["Log out"]
    assert texts(at, "title")[0] == "Review X-rays"  # the first page is the default
    assert any("not diagnoses" in w for w in texts(at, "warning"))
    assert at.session_state[USER_KEY] == "Dr Rev"
    assert [e.detail for e in events(db_url, who="Dr Rev", action="login")] == ["app"]


@pytest.mark.parametrize("role", auth.ROLES)
def test_navigation_lists_only_the_pages_the_role_may_open(admin, db_url, role):
    at = app()
    login(at, db_url, f"user {role}", role)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # AppTest.switch_page raises for a page that the run's st.navigation did not register
    for action, (path, _) in PAGE_FILES.items():
        if auth.can(role, action):
            at.switch_page(path)
        else:
            with pytest.raises(ValueError, match="Could not find a navigation page"):
                at.switch_page(path)
    allowed = [a for a in PAGE_FILES if auth.can(role, a)]
    path, title = PAGE_FILES[allowed[-1]]  # the last one the role may open does open
    at.switch_page(path).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(title in t for t in texts(at, "title")), texts(at, "title")


def test_a_page_refuses_a_role_that_may_not_open_it(admin, db_url):
    at = AppTest.from_file(str(REPO / "pages" / "sessions.py"), default_timeout=TIMEOUT)
    login(at, db_url, "Dr Rev", "reviewer")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert texts(at, "error") == ["Your role (reviewer) may not open the Reading sessions page; only admin may."]
    assert sidebar_texts(at)[:2] == ["Dr Rev", "Role: reviewer"]
    assert not any("Reading sessions" in t for t in texts(at, "title"))


def test_the_name_is_shown_as_plain_text_not_markdown(admin, db_url):
    make_user(db_url, "**Bold** [x](javascript:alert(1))", "reviewer")
    at = fill_login(app().run(), "**Bold** [x](javascript:alert(1))", PASSWORD)
    assert [e.value for e in at.sidebar.get("text")][0] == "**Bold** [x](javascript:alert(1))"
    assert not any("Bold" in m.value for m in at.sidebar.markdown)


def test_wrong_password_says_so_and_logs_nobody_in(admin, db_url):
    at = fill_login(app().run(), admin.name, "not the right password")
    assert len(texts(at, "error")) == 1
    message = texts(at, "error")[0]
    assert admin.name not in message
    at2 = fill_login(app().run(), "nobody by that name", "not the right password")
    assert texts(at2, "error") == [message]  # an unknown name gets the same message: names are not revealed
    assert USER_KEY not in at.session_state
    assert ("button", "Log out") not in widgets(at)
    assert len(events(db_url, action="login_failed")) == 2


def test_five_failures_lock_the_account_even_for_the_right_password(admin, db_url):
    at = app().run()
    for _ in range(5):
        fill_login(at, admin.name, "not the right password")
    fill_login(at, admin.name, PASSWORD)
    assert USER_KEY not in at.session_state
    assert len(texts(at, "error")) == 1
    assert re.search(r"lock", texts(at, "error")[0], re.IGNORECASE), texts(at, "error")
    assert ("button", "Log out") not in widgets(at)


def test_a_disabled_account_is_logged_out_at_once(admin, db_url):
    at = app()
    login(at, db_url, "Dr Gone", "reviewer")
    at.run()
    assert sidebar_texts(at)[0] == "Dr Gone"
    engine = storage.make_engine(db_url)
    with storage.session_factory(engine).begin() as s:
        auth.disable_user(s, "Dr Gone")
    engine.dispose()
    at.run()
    assert_login_form_only(at)


# --- idle timeout and logging out ----------------------------------------------------------------------


def test_idle_timeout_logs_out(admin, db_url):
    at = app()
    login(at, db_url, admin.name, "admin")
    at.session_state[LAST_SEEN_KEY] = time.time() - auth.IDLE_TIMEOUT_S - 5
    at.run()
    assert_login_form_only(at)
    assert any("without activity" in i for i in texts(at, "info")), texts(at, "info")
    assert USER_KEY not in at.session_state
    assert [e.detail for e in events(db_url, who=admin.name, action="logout")] == ["idle timeout"]


def test_activity_within_the_timeout_keeps_the_user_logged_in(admin, db_url):
    at = app()
    login(at, db_url, admin.name, "admin")
    at.session_state[LAST_SEEN_KEY] = time.time() - auth.IDLE_TIMEOUT_S + 60
    at.run()
    assert sidebar_texts(at)[0] == admin.name
    assert at.session_state[LAST_SEEN_KEY] > time.time() - 60  # this run counts as activity


def test_log_out_returns_to_the_login_form_and_forgets_the_session(admin, db_url):
    at = app()
    login(at, db_url, admin.name, "admin")
    at.session_state["review_selected"] = "something of this user's"
    at.run()
    next(b for b in at.sidebar.button if b.label == "Log out").click().run()
    assert_login_form_only(at)
    assert "You are logged out." in texts(at, "info")
    assert "review_selected" not in at.session_state  # the next user sees nothing of this session
    assert len(events(db_url, who=admin.name, action="logout")) == 1


# --- first run: the setup code --------------------------------------------------------------------------


def test_first_admin_is_created_with_the_setup_code_from_the_server_log(db_url, caplog):
    caplog.set_level(logging.WARNING)
    at = app().run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [label for _, label in widgets(at)]
    assert labels == ["Setup code", "Administrator name", "Password", "Password again", "Create administrator"]
    codes = re.findall(r"setup code: (\S+)", caplog.text)
    assert len(codes) == 1, caplog.text
    caplog.clear()
    at2 = app().run()  # a second browser session: the code is not written again by this server process
    assert "setup code" not in caplog.text

    def create(code: str, password: str, again: str) -> None:
        at.text_input(key="auth_setup_code").input(code)
        at.text_input(key="auth_admin_name").input("Ada Admin")
        at.text_input(key="auth_admin_password").input(password)
        at.text_input(key="auth_admin_again").input(again)
        next(b for b in at.button if b.label == "Create administrator").click().run()
        assert not at.exception, [e.value for e in at.exception]

    create("wrong-code", PASSWORD, PASSWORD)
    assert texts(at, "error") and USER_KEY not in at.session_state
    create(codes[0], PASSWORD, PASSWORD + "!")
    assert texts(at, "error") == ["The two passwords differ; nothing was created."]
    create(codes[0], "too short", "too short")
    assert texts(at, "error") and USER_KEY not in at.session_state
    create(codes[0], PASSWORD, PASSWORD)
    assert sidebar_texts(at)[:2] == ["Ada Admin", "Role: admin"]
    at.switch_page("pages/sessions.py").run()  # an administrator's page
    assert any("Reading sessions" in t for t in texts(at, "title"))
    assert_login_form_only(at2.run())  # now an administrator exists: the other session asks for a login


# --- single sign-on (CXR_AUTH=oidc) through AppTest's user ------------------------------------------------


@pytest.fixture
def oidc(db_url, monkeypatch):
    monkeypatch.setenv("CXR_AUTH", "oidc")
    monkeypatch.setenv("CXR_OIDC_ROLE_CLAIM", "groups")
    monkeypatch.setenv("CXR_OIDC_ROLE_MAP", "cxr-admins=admin,cxr-readers=reviewer")
    return db_url


def sso(**claims) -> AppTest:
    at = app()
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "cxr", "client_secret": "s",
                          "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration"}
    at.user = {"is_logged_in": bool(claims), **claims}
    return at


def test_sso_logged_out_shows_only_the_sign_on_button(oidc):
    at = sso().run()
    assert not at.exception, [e.value for e in at.exception]
    assert widgets(at) == [("button", "Log in with single sign-on")]
    with pytest.raises(ValueError, match=r"Known pages: \['Log in'\]"):
        at.switch_page("pages/review.py")


def test_sso_without_auth_secrets_says_what_is_missing(oidc):
    at = app()
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("[auth]" in e for e in texts(at, "error"))
    assert not widgets(at)


def test_sso_role_comes_from_the_mapped_claim(oidc):
    at = sso(sub="u-1", email="rev@hospital.org", name="Dr Rev", groups=["staff", "cxr-readers"]).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = sidebar_texts(at)
    assert shown[1] == "Role: reviewer", shown
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/sessions.py")
    assert events(oidc, action="login")


def test_sso_without_a_mapped_role_is_refused(oidc):
    at = sso(sub="u-2", email="visitor@hospital.org", groups=["staff"]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(texts(at, "error")) == 1
    assert not any("not diagnoses" in w for w in texts(at, "warning"))
    assert [label for _, label in widgets(at)] == ["Log out"]
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/review.py")
    assert events(oidc, action="login_failed")


def test_sso_log_out_ends_the_identity(oidc):
    at = sso(sub="u-3", email="admin@hospital.org", name="Dr Admin", groups=["cxr-admins"]).run()
    assert sidebar_texts(at)[1] == "Role: admin"
    next(b for b in at.sidebar.button if b.label == "Log out").click().run()
    assert at.user == {"is_logged_in": False}  # st.logout() ran (in a browser: the provider's logout, then back)
    assert USER_KEY not in at.session_state
    at.run()
    assert widgets(at) == [("button", "Log in with single sign-on")]
    assert len(events(oidc, who="admin@hospital.org", action="logout")) == 1


# --- safe defaults ------------------------------------------------------------------------------------------


def test_streamlit_config_is_safe_and_uploads_fit_what_the_loader_accepts():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["enableXsrfProtection"] is True
    assert config["client"]["showErrorDetails"] == "none"  # no traceback in the browser
    from cxr_core.models.upload import MAX_MODEL_BYTES
    from ui.common import FILM_UPLOAD_MB

    # The server's cap is the largest file any uploader takes: an administrator's model file.
    assert config["server"]["maxUploadSize"] * 2**20 == pytest.approx(MAX_MODEL_BYTES, rel=0.001)
    largest_film = get_settings().max_pixels * 2  # an uncompressed 16-bit film at the pixel limit
    limit = FILM_UPLOAD_MB * 2**20
    assert largest_film < limit < largest_film * 1.1  # film uploads: it fits, with room for a header, and little more


def test_film_uploaders_take_no_more_than_the_loader_accepts(tmp_path):
    from ui.common import FILM_UPLOAD_MB

    for page, role in (("pages/review.py", "reviewer"), ("pages/sessions.py", "admin")):
        at = AppTest.from_file(str(REPO / page), default_timeout=120)
        login(at, name=f"up-{role}", role=role)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        uploaders = at.get("file_uploader")
        assert uploaders and all(u.proto.max_upload_size_mb == FILM_UPLOAD_MB for u in uploaders), page


def test_make_run_listens_on_localhost_unless_cxr_host_says_otherwise():
    def dry_run(**env) -> str:
        out = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, check=True,
                             env={"PATH": "/usr/bin:/bin", **env})
        return next(line for line in out.stdout.splitlines() if "streamlit run" in line or "--server" in line)

    assert "--server.address 127.0.0.1" in dry_run()
    assert "--server.address 0.0.0.0" in dry_run(CXR_HOST="0.0.0.0")


def test_secrets_file_is_never_committed():
    result = subprocess.run(["git", "check-ignore", "-q", ".streamlit/secrets.toml"], cwd=REPO)
    assert result.returncode == 0
