"""Accounts: create, list, disable, change role, reset password, log in, first admin, OIDC users.

Readers are the users (``User.id == readers.id``): a reader from before logins existed keeps every
annotation and becomes a user without a password, who can log in once an administrator sets one.
Functions take a Session and leave the commit to the caller (``with factory.begin() as s:``),
except :func:`authenticate`, which commits its own outcome so that a failed attempt is counted and
recorded even though the caller's block then unwinds with :class:`LoginFailed`.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cxr_core.auth import trail
from cxr_core.auth.passwords import check_password_rules, hash_password, needs_rehash, verify_password
from cxr_core.auth.roles import ROLES, Forbidden, User
from cxr_core.errors import CXRError
from cxr_core.storage.schema import Reader

log = logging.getLogger(__name__)

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
#: One message for an unknown user, a wrong password and an account without a password.
LOGIN_FAILED = "User name or password is wrong."


class AccountError(CXRError):
    """An account request that cannot be met as asked (unknown user, name taken, bad role)."""


class LoginFailed(CXRError):
    """Wrong user name or password (one message for both, so names cannot be guessed)."""


class AccountDisabled(LoginFailed):
    """The password was right but an administrator has disabled the account."""


class LockedOut(LoginFailed):
    """Too many failures in a row: the account refuses every password until the lock ends."""


class SetupCodeError(CXRError):
    """The first-admin setup code is wrong, used up, or not needed because an admin exists."""


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


def _user(reader: Reader) -> User:
    return User(id=reader.id, name=reader.name, role=reader.role, disabled=bool(reader.disabled))


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountError(f"role {role!r}; expected one of {', '.join(ROLES)}")


def _reader(s: Session, name: str) -> Reader:
    reader = s.scalar(select(Reader).where(Reader.name == name))
    if reader is None:
        raise AccountError(f"no user named {name!r}; see `python -m cxr_core users list`")
    return reader


def get_user(s: Session, name: str) -> User | None:
    """The user with this name as it is now in the database (role, disabled), or ``None``."""
    reader = s.scalar(select(Reader).where(Reader.name == name))
    return None if reader is None else _user(reader)


def create_user(s: Session, name: str, role: str, password: str | None, *, by: str | None = None) -> User:
    """Add a user; ``password=None`` leaves it without one (it cannot log in until one is set).

    ``by`` is who made the change (for the trail; ``None``: the operator or the system).
    """
    from cxr_core.storage import add_reader

    _check_role(role)
    password_hash = None if password is None else hash_password(password)  # rules checked before any write
    try:
        reader = add_reader(s, name, role)
    except CXRError as exc:
        raise AccountError(str(exc)) from None
    reader.password_hash = password_hash
    s.flush()
    trail.record(s, by, "user_change", detail=f"added {reader.name!r} as {role}"
                 + ("" if password is not None else " without a password"))
    return _user(reader)


def list_users(s: Session) -> list[User]:
    """Every user by name, disabled ones included."""
    return [_user(r) for r in s.scalars(select(Reader).order_by(Reader.name))]


def account_status(s: Session, name: str, now: datetime | None = None) -> str:
    """``active``, ``disabled``, ``no password`` or ``locked until HH:MM UTC`` (for lists)."""
    reader = _reader(s, name)
    if reader.disabled:
        return "disabled"
    if reader.password_hash is None:
        return "no password"
    if reader.locked_until is not None and reader.locked_until > _now(now):
        return f"locked until {reader.locked_until:%Y-%m-%d %H:%M} UTC"
    return "active"


def disable_user(s: Session, name: str, *, by: str | None = None) -> User:
    """Disable an account: it can no longer log in, and a logged-in session stops at its next action.

    The last enabled administrator cannot be disabled (nobody could manage users any more).
    """
    reader = _reader(s, name)
    if reader.role == "admin" and not reader.disabled and _other_admins(s, reader.id) == 0:
        raise AccountError(f"{name!r} is the only enabled administrator; make another one first")
    reader.disabled = True
    s.flush()
    trail.record(s, by, "user_change", detail=f"disabled {name!r}")
    return _user(reader)


def enable_user(s: Session, name: str, *, by: str | None = None) -> User:
    """Enable a disabled account again."""
    reader = _reader(s, name)
    reader.disabled = False
    s.flush()
    trail.record(s, by, "user_change", detail=f"enabled {name!r}")
    return _user(reader)


def set_role(s: Session, name: str, role: str, *, by: str | None = None) -> User:
    """Change a user's role (the last enabled administrator keeps theirs)."""
    _check_role(role)
    reader = _reader(s, name)
    if reader.role == "admin" and role != "admin" and not reader.disabled and _other_admins(s, reader.id) == 0:
        raise AccountError(f"{name!r} is the only enabled administrator; make another one first")
    old, reader.role = reader.role, role
    s.flush()
    trail.record(s, by, "user_change", detail=f"role of {name!r}: {old} -> {role}")
    return _user(reader)


def reset_password(s: Session, name: str, password: str, *, by: str | None = None) -> User:
    """Set a new password and lift any lockout."""
    password_hash = hash_password(password)
    reader = _reader(s, name)
    reader.password_hash, reader.failed_logins, reader.locked_until = password_hash, 0, None
    s.flush()
    trail.record(s, by, "user_change", detail=f"password of {name!r} set")
    return _user(reader)


def _other_admins(s: Session, reader_id: int) -> int:
    return len(s.scalars(select(Reader.id).where(
        Reader.role == "admin", Reader.disabled.is_(False), Reader.id != reader_id)).all())


def authenticate(s: Session, name: str, password: str, now: datetime | None = None, *, via: str = "app") -> User:
    """The user whose name and password these are; commits the outcome (see the module docstring).

    Call it in a plain Session, ``with factory() as s: user = authenticate(s, name, password)``: the
    commit ends the transaction, so inside ``with factory.begin() as s:`` the Session cannot be used
    after it (SQLAlchemy refuses). Not in :func:`~cxr_core.storage.read_transaction` (it writes).

    Five failures in a row lock the account for 15 minutes (:class:`LockedOut`, even with the right
    password); an unknown name, a wrong password and an account without a password all raise
    :class:`LoginFailed` with one message. A disabled account raises :class:`AccountDisabled` once
    the password was right. Every attempt is recorded in the trail (``login`` / ``login_failed``).
    ``now`` replaces the clock (tests); ``via`` says where the attempt came from (``app``, ``cli``).
    """
    now = _now(now)
    name = (name or "").strip()
    reader = s.scalar(select(Reader).where(Reader.name == name)) if name else None
    error: LoginFailed | None = None
    if reader is None:
        verify_password(None, password or "")  # as slow as a real check
        trail.record(s, name or None, "login_failed", detail=f"{via}: unknown user", at=now)
        error = LoginFailed(LOGIN_FAILED)
    elif reader.locked_until is not None and reader.locked_until > now:
        trail.record(s, reader.name, "login_failed", detail=f"{via}: locked", at=now)
        error = LockedOut(_locked_message(reader.locked_until))
    elif not verify_password(reader.password_hash, password or ""):
        reader.failed_logins = (reader.failed_logins or 0) + 1
        why = "no password set" if reader.password_hash is None else "wrong password"
        if reader.failed_logins >= MAX_FAILURES:
            reader.failed_logins, reader.locked_until = 0, now + LOCKOUT
            trail.record(s, reader.name, "login_failed", detail=f"{via}: {why}; locked for 15 minutes", at=now)
            error = LockedOut(_locked_message(reader.locked_until))
        else:
            trail.record(s, reader.name, "login_failed", detail=f"{via}: {why}", at=now)
            error = LoginFailed(LOGIN_FAILED)
    elif reader.disabled:
        trail.record(s, reader.name, "login_failed", detail=f"{via}: account disabled", at=now)
        error = AccountDisabled(f"The account {reader.name!r} is disabled; ask an administrator.")
    else:
        reader.failed_logins, reader.locked_until = 0, None
        if needs_rehash(reader.password_hash):
            reader.password_hash = hash_password(password)
        trail.record(s, reader.name, "login", detail=via, at=now)
    user = None if reader is None else _user(reader)
    s.commit()
    if error is not None:
        raise error
    assert user is not None
    return user


def _locked_message(until: datetime) -> str:
    return (f"Too many failed log-ins: this account is locked until {until:%H:%M} UTC ({until:%Y-%m-%d}). "
            "Try again then, or ask an administrator to reset the password.")


# --- first administrator --------------------------------------------------------------------

_SETUP_CODES: dict[str, str] = {}
_SETUP_LOCK = threading.Lock()


def admin_exists(s: Session) -> bool:
    """Whether an enabled administrator with a password exists (someone who can manage users)."""
    return s.scalar(select(Reader.id).where(
        Reader.role == "admin", Reader.disabled.is_(False), Reader.password_hash.is_not(None)).limit(1)) is not None


def setup_code(engine: Engine) -> str | None:
    """The one-time code that creates the first administrator, or ``None`` once one exists.

    Made once per server process and database, and written to the server log (``WARNING``) when
    made: only who can read the log, i.e. who runs the server, can create the first admin. Used up by
    :func:`create_first_admin`; a restart makes a new one while no admin exists.
    """
    from cxr_core.storage import read_transaction, session_factory

    with read_transaction(session_factory(engine)) as s:
        if admin_exists(s):
            return None
    key = engine.url.render_as_string(hide_password=True)
    with _SETUP_LOCK:
        code = _SETUP_CODES.get(key)
        if code is None:
            raw = secrets.token_hex(6).upper()
            code = _SETUP_CODES[key] = f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"
            log.warning("CXR Review: no administrator yet. First-admin setup code: %s "
                        "(enter it in the app to create the first administrator)", code)
    return code


def _normalise_code(code: str) -> str:
    return "".join(ch for ch in str(code or "").upper() if ch.isalnum())


def create_first_admin(s: Session, code: str, name: str, password: str) -> User:
    """Create the first administrator with the setup code from the server log.

    Refused (:class:`SetupCodeError`) once an administrator exists or with a wrong code (that attempt
    is recorded in the trail and committed before the exception). A reader
    from before logins that has no password may be claimed this way (it becomes the admin and keeps
    its annotations); a name that already has a password may not.
    """
    check_password_rules(password)
    if admin_exists(s):
        raise SetupCodeError("An administrator already exists; ask them to create your account.")
    key = s.get_bind().engine.url.render_as_string(hide_password=True)
    with _SETUP_LOCK:
        expected = _SETUP_CODES.get(key)
        ok = expected is not None and hmac.compare_digest(_normalise_code(code), _normalise_code(expected))
    if not ok:  # kept although the caller's block unwinds (committed here, as authenticate does)
        trail.record(s, (name or "").strip() or None, "login_failed", detail="wrong first-admin setup code")
        s.commit()
        raise SetupCodeError("The setup code is wrong; copy it from the server's log (it is printed when the "
                             "app starts while no administrator exists).")
    existing = s.scalar(select(Reader).where(Reader.name == (name or "").strip()))
    if existing is not None:
        if existing.password_hash is not None:
            raise AccountError(f"a user named {existing.name!r} already exists; choose another name")
        existing.role, existing.disabled = "admin", False
        existing.password_hash, existing.failed_logins, existing.locked_until = hash_password(password), 0, None
        s.flush()
        trail.record(s, existing.name, "user_change", detail=f"first administrator: existing reader {name!r}")
        user = _user(existing)
    else:
        user = create_user(s, name, "admin", password, by=(name or "").strip())
    with _SETUP_LOCK:
        _SETUP_CODES.pop(key, None)
    return user


# --- single sign-on -------------------------------------------------------------------------


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or a nested one by dotted path (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def role_from_claims(claims: Mapping[str, Any], settings: Any) -> str | None:
    """The role the ID-token claims map to, or ``None`` (deny by default).

    The claim ``settings.oidc_role_claim`` may hold a string or a list of strings; only values listed
    in ``settings.oidc_role_map`` count. When several map, the most trusted role wins (:data:`ROLES`
    order: reviewer < sme < researcher < admin).
    """
    raw = _claim(claims, settings.oidc_role_claim)
    values = [raw] if isinstance(raw, str) else [v for v in raw if isinstance(v, str)] if isinstance(
        raw, (list, tuple)) else []
    mapping = dict(settings.oidc_role_map)
    roles = {mapping[v] for v in values if v in mapping}
    return max(roles, key=ROLES.index) if roles else None


def user_from_oidc(s: Session, claims: Mapping[str, Any], settings: Any) -> User:
    """The user a single sign-on identity is, created or updated from the ID-token claims.

    The name is the claim ``settings.oidc_name_claim`` (default ``email``), the role comes from
    :func:`role_from_claims` and is updated when the identity provider changes it. Raises
    :class:`~cxr_core.auth.roles.Forbidden` when the token carries no mapped role, no name, or the
    account was disabled here. Writes (and records ``user_change``) only when something changed.
    """
    if not claims or claims.get("is_logged_in") is False:
        raise Forbidden("Log in first: no single sign-on identity was received.")
    name = _claim(claims, settings.oidc_name_claim)
    if not isinstance(name, str) or not name.strip():
        raise Forbidden(f"Your sign-in carries no {settings.oidc_name_claim!r} claim, so CXR Review cannot tell who "
                        "you are; ask the identity provider's administrator to release it.")
    name = name.strip()[:200]
    role = role_from_claims(claims, settings)
    if role is None:
        raise Forbidden(f"Your sign-in ({name}) carries no role for CXR Review in its {settings.oidc_role_claim!r} "
                        "claim; ask an administrator to add you to one of the app's groups.")
    reader = s.scalar(select(Reader).where(Reader.name == name))
    if reader is None:
        return create_user(s, name, role, None, by=None)
    if reader.disabled:
        raise Forbidden(f"The account {name!r} is disabled in CXR Review; ask an administrator.")
    if reader.role != role:
        old, reader.role = reader.role, role
        s.flush()
        trail.record(s, None, "user_change", detail=f"role of {name!r}: {old} -> {role} (from single sign-on)")
    return _user(reader)
