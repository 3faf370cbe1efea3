"""Who is using the app: the login form, the first administrator, the sidebar, and the page gate.

Two backends behind ``CXR_AUTH`` (the rules themselves live in :mod:`cxr_core.auth`):

- ``local`` (default): accounts in the annotation database. Nobody logged in sees a form with
  **User name**, **Password** and **Log in** and nothing else; when no administrator exists yet,
  the server prints a one-time setup code in its log (once per process) and the app asks for it
  to create the first administrator.
- ``oidc``: hospital single sign-on through Streamlit's ``st.login`` / ``st.user``
  (``[auth]`` in ``.streamlit/secrets.toml``); the role comes from the ID token through
  :func:`cxr_core.auth.user_from_oidc`, and a token that maps to no role is refused.

The logged-in user is re-read from the database on every run, so disabling an account or
changing a role applies at once; a browser session idle for ``CXR_IDLE_TIMEOUT_MIN`` minutes
(default 30) is logged out. Session-state keys are prefixed ``auth_`` (plus the two below).
"""

from __future__ import annotations

import time

import streamlit as st

from cxr_core import auth
from cxr_core.config import get_settings
from cxr_core.errors import CXRError

USER_KEY = "cxr_user"  # the logged-in user's NAME (the record is re-read from the database every run)
LAST_SEEN_KEY = "cxr_last_seen"  # time.time() of the last run, for the idle timeout
NOTICE_KEY = "auth_notice"  # one-run message on the login form (logged out, idle timeout)
OIDC_SUBJECT_KEY = "auth_oidc_subject"  # the st.user identity already mapped (and its login recorded)
REFUSED_KEY = "auth_oidc_refused"  # (identity, message) of a single sign-on that maps to no role

#: How often (at most) an open page checks the idle timeout by itself, so an unattended screen logs out.
IDLE_CHECK_S = 60


# --- who is logged in ------------------------------------------------------------------------------


def _oidc() -> bool:
    return get_settings().auth == "oidc"


def _db():
    from ui import common

    return common.db()


def _reading():
    from ui import common

    return common.reading()


def _user_named(name: str) -> auth.User | None:
    with _reading() as s:
        return auth.get_user(s, name)


def current_user() -> auth.User | None:
    """The logged-in user, re-read from the database (a disabled account counts as nobody)."""
    if _oidc() and not st.user.get("is_logged_in"):
        return None
    name = st.session_state.get(USER_KEY)
    if not name:
        return None
    user = _user_named(name)
    return None if user is None or user.disabled else user


def allowed(action: str) -> bool:
    """Whether the logged-in user's role may do ``action`` (for buttons and downloads inside a page)."""
    user = current_user()
    return auth.can(user.role if user else None, action)


def record(action: str, *, film_sha: str | None = None, detail: str = "") -> None:
    """Write one audit-trail event in the logged-in user's name."""
    user = current_user()
    with _db().begin() as s:
        auth.record(s, user.name if user else None, action, film_sha=film_sha, detail=detail)


def require_page(action: str) -> auth.User:
    """First line of every page: the sidebar (name, role, **Log out**), then a plain refusal and
    ``st.stop()`` unless the logged-in user's role may open the page.

    The gate is checked again here, not only in ``app.py``: Streamlit runs a file of ``pages/`` on its
    own (without ``app.py``) on a server's first run and under AppTest, and such a run shows the
    login form instead. The sidebar is drawn here, once per run, for the same reason.
    """
    user = _gate()
    _sidebar(user)
    try:
        auth.require(user, action)
    except auth.Forbidden as err:
        st.error(str(err))
        st.stop()
    return user


def login_gate() -> auth.User:
    """Called once in ``app.py`` before ``st.navigation``: the logged-in user; otherwise the login
    (or first-administrator) form alone, with no page listed, and ``st.stop()``."""
    return _gate()


# --- the gate --------------------------------------------------------------------------------------


def _gate() -> auth.User:
    """The logged-in user after the idle check; when there is none, the login screen and ``st.stop()``."""
    if _idle_expired():
        minutes = auth.IDLE_TIMEOUT_S // 60
        _log_out(detail="idle timeout", notice=f"You were logged out after {minutes} minute{'s' * (minutes != 1)} "
                                                "without activity. Log in again to continue.")
    user = _oidc_user() if _oidc() else current_user()
    if user is None:
        if st.session_state.get(USER_KEY):  # the account was disabled or removed since the login
            _forget()
        _login_screen()
        st.stop()
    st.session_state[LAST_SEEN_KEY] = time.time()
    return user


def _idle_expired() -> bool:
    if not (st.session_state.get(USER_KEY) or (_oidc() and st.user.get("is_logged_in"))):
        return False
    last = st.session_state.get(LAST_SEEN_KEY)
    return last is not None and auth.idle_expired(last, time.time())


def _login_screen() -> None:
    """Only the login (or first-administrator) form, with navigation hidden: no page of the app is listed."""
    st.navigation([st.Page(_login_page, title="Log in", default=True)], position="hidden").run()


def _login_page() -> None:
    st.title("CXR Review")
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice:
        st.info(notice)
    if _oidc():
        _oidc_login()
        return
    with _reading() as s:
        first_run = not auth.admin_exists(s)
    if first_run:
        _first_admin_form()
    else:
        _login_form()


def _login_form() -> None:
    with st.form("auth_login", clear_on_submit=True, border=False):
        name = st.text_input("User name", key="auth_name", autocomplete="username")
        password = st.text_input("Password", type="password", key="auth_password", autocomplete="current-password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        error = None
        with _db().begin() as s:  # failures must be committed too: they count towards the lockout
            try:
                user = auth.authenticate(s, name.strip(), password)
            except auth.LoginFailed as err:  # also LockedOut and AccountDisabled, each with its own message
                error = err
        if error is not None:
            st.error(str(error))
            return
        _start(user)


def new_password(key: str, label: str = "Password") -> str | None:
    """Two password boxes (``label`` and "... again") inside the caller's form; returns the password, or
    None when the two differ (then the caller changes nothing and says so)."""
    first = st.text_input(label, type="password", key=f"{key}_password", autocomplete="new-password")
    again = st.text_input(f"{label} again", type="password", key=f"{key}_again", autocomplete="new-password")
    return first if first == again else None


def _first_admin_form() -> None:
    auth.setup_code(_db().kw["bind"])  # made, and written to the server log, once per process and database
    st.subheader("First run: create the administrator")
    st.write("No administrator exists yet. The server printed a one-time setup code in its log "
             "(the terminal that runs `make run`); enter it with the administrator's name and password "
             "(at least 12 characters).")
    with st.form("auth_first_admin", clear_on_submit=True, border=False):
        code = st.text_input("Setup code", type="password", key="auth_setup_code")
        name = st.text_input("Administrator name", key="auth_admin_name", autocomplete="username")
        password = new_password("auth_admin")
        submitted = st.form_submit_button("Create administrator")
    if not submitted:
        return
    if password is None:
        st.error("The two passwords differ; nothing was created.")
        return
    try:
        with _db().begin() as s:
            user = auth.create_first_admin(s, code.strip(), name.strip(), password)  # recorded in the trail
    except CXRError as err:
        st.error(str(err))
        return
    _start(user)


def _start(user: auth.User) -> None:
    """Begin a logged-in browser session: nothing of a previous user's session state is kept."""
    _forget()
    st.session_state[USER_KEY] = user.name
    st.session_state[LAST_SEEN_KEY] = time.time()
    st.rerun()


def _forget() -> None:
    for key in list(st.session_state.keys()):
        del st.session_state[key]


def _log_out(*, detail: str = "", notice: str = "You are logged out.") -> None:
    """End the logged-in session (recorded in the trail); the next screen is the login form."""
    user = current_user()
    if user is not None:
        with _db().begin() as s:
            auth.record(s, user.name, "logout", detail=detail)
    _forget()
    st.session_state[NOTICE_KEY] = notice
    if _oidc():
        st.logout()  # clears the identity cookie and ends the session at the provider when it can


def _sidebar(user: auth.User) -> None:
    with st.sidebar:
        st.text(user.name)  # plain text: a name is never rendered as markdown
        st.caption(f"Role: {user.role}")
        if st.button("Log out", key="auth_logout"):
            _log_out()
            if _oidc():
                st.stop()  # st.logout() sends the browser to the provider's logout; it comes back logged out
            st.rerun()
        _idle_watch()


def _idle_watch() -> None:
    """Re-check the idle timeout every minute (a quarter of the timeout when shorter) without counting as
    activity, so an unattended screen logs itself out; the full rerun then logs out (:func:`_gate`)."""
    st.fragment(_idle_check, run_every=max(5, min(IDLE_CHECK_S, auth.IDLE_TIMEOUT_S // 4)))()


def _idle_check() -> None:
    last = st.session_state.get(LAST_SEEN_KEY)
    if last is not None and auth.idle_expired(last, time.time()):
        st.rerun(scope="app")


# --- single sign-on (CXR_AUTH=oidc) ------------------------------------------------------------------


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except FileNotFoundError:
        return False


def _oidc_login() -> None:
    if not _oidc_configured():
        st.error("Single sign-on is switched on (CXR_AUTH=oidc) but `.streamlit/secrets.toml` has no [auth] "
                 "section; an administrator must add the provider's settings (see README, Logging in).")
        return
    st.write("Log in with your hospital account.")
    if st.button("Log in with single sign-on", key="auth_sso"):
        st.login()


def _oidc_user() -> auth.User | None:
    """The user for the identity in ``st.user``, mapped once per browser session (its login recorded);
    a token whose claims map to no role is refused, with a way to log out and try another account."""
    if not st.user.get("is_logged_in"):
        return None
    claims = st.user.to_dict()
    subject = f"{claims.get('iss', '')}|{claims.get('sub', '')}|{claims.get('email', '')}"
    if st.session_state.get(OIDC_SUBJECT_KEY) != subject:
        try:
            with _db().begin() as s:
                user = auth.user_from_oidc(s, claims, get_settings())
                auth.record(s, user.name, "login", detail="single sign-on")
        except auth.Forbidden as err:
            if st.session_state.get(REFUSED_KEY, (None,))[0] != subject:  # one trail event per identity
                with _db().begin() as s:
                    auth.record(s, str(claims.get("email") or claims.get("sub") or "?"), "login_failed",
                                detail=f"single sign-on refused: {err}")
            st.session_state[REFUSED_KEY] = (subject, str(err))
            st.navigation([st.Page(_refused_page, title="Refused", default=True)], position="hidden").run()
            st.stop()
        _forget()
        st.session_state[OIDC_SUBJECT_KEY] = subject
        st.session_state[USER_KEY] = user.name
        st.session_state[LAST_SEEN_KEY] = time.time()
    return current_user()


def _refused_page() -> None:
    st.title("CXR Review")
    st.error(st.session_state[REFUSED_KEY][1])
    if st.button("Log out", key="auth_logout"):  # to sign in with another account
        _forget()
        st.logout()
