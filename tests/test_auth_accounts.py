"""Accounts: argon2id hashes, the length rule, lockout with an injected clock, disabled accounts, one
refusal message, the first-admin setup code, and OIDC claims mapped to roles (deny by default)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from argon2 import PasswordHasher, Type
from argon2.exceptions import VerifyMismatchError

from cxr_core import auth, storage
from cxr_core.auth import accounts
from cxr_core.config import SettingsError, get_settings

PW = "correct horse battery"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def db(tmp_path):
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'users.db'}")
    yield storage.session_factory(engine)
    engine.dispose()


def _hash_of(factory, name):
    with factory() as s:
        return storage.get_reader(s, name).password_hash


def _login(factory, name, password, now=None):
    with factory.begin() as s:
        return auth.authenticate(s, name, password, now)


def test_passwords_are_argon2id_and_verify(db):
    with db.begin() as s:
        user = auth.create_user(s, "dr-a", "sme", PW)
    assert (user.name, user.role, user.disabled) == ("dr-a", "sme", False)
    stored = _hash_of(db, "dr-a")
    assert stored.startswith("$argon2id$") and PW not in stored
    assert PasswordHasher().verify(stored, PW)  # a standard argon2id hash, not something home-made
    with pytest.raises(VerifyMismatchError):
        PasswordHasher(type=Type.ID).verify(stored, PW + "!")
    assert _login(db, "dr-a", PW, T0) == user


@pytest.mark.parametrize("bad", ["", "short", "x" * 11])
def test_short_passwords_are_refused_and_nothing_is_written(db, bad):
    with pytest.raises(auth.PasswordTooShort, match=f"has {len(bad)} characters; it needs at least 12"):
        with db.begin() as s:
            auth.create_user(s, "dr-b", "sme", bad)
    with db() as s:
        assert storage.get_reader(s, "dr-b") is None
    with db.begin() as s:
        auth.create_user(s, "dr-b", "sme", "x" * 12)  # exactly 12 is enough
        with pytest.raises(auth.PasswordTooShort):
            auth.reset_password(s, "dr-b", "y" * 11)
    assert _login(db, "dr-b", "x" * 12, T0).name == "dr-b"


def test_no_default_password_an_account_without_one_cannot_log_in(db):
    with db.begin() as s:
        storage.add_reader(s, "old-reader", "sme")  # a reader from before logins
        assert auth.create_user(s, "nopw", "reviewer", None).name == "nopw"
    for name in ("old-reader", "nopw"):
        for attempt in ("", "anything at all!", "password1234"):
            with pytest.raises(auth.LoginFailed, match="^User name or password is wrong.$"):
                _login(db, name, attempt, T0)
    with db.begin() as s:
        auth.reset_password(s, "old-reader", PW)
    assert _login(db, "old-reader", PW, T0).role == "sme"


def test_unknown_user_and_wrong_password_get_the_same_message(db):
    with db.begin() as s:
        auth.create_user(s, "dr-a", "sme", PW)
    messages = []
    for name, password in (("nobody", PW), ("dr-a", "wrong password!!")):
        with pytest.raises(auth.LoginFailed) as exc:
            _login(db, name, password, T0)
        assert type(exc.value) is auth.LoginFailed
        messages.append(str(exc.value))
    assert messages[0] == messages[1] == "User name or password is wrong."


def test_lockout_after_five_failures_and_release_after_fifteen_minutes(db):
    with db.begin() as s:
        auth.create_user(s, "dr-a", "sme", PW)
    for i in range(4):
        with pytest.raises(auth.LoginFailed) as exc:
            _login(db, "dr-a", f"wrong guess no {i}", T0 + timedelta(seconds=i))
        assert not isinstance(exc.value, auth.LockedOut)
    with pytest.raises(auth.LockedOut, match="locked until 09:15 UTC"):  # the fifth failure locks
        _login(db, "dr-a", "wrong guess no 5", T0 + timedelta(seconds=4))
    # the failures were kept although each login's transaction unwound with the exception
    with db() as s:
        assert storage.get_reader(s, "dr-a").locked_until == T0 + timedelta(seconds=4, minutes=15)
    for later in (timedelta(minutes=1), timedelta(minutes=15)):  # even the right password is refused
        with pytest.raises(auth.LockedOut, match="locked until 09:15 UTC"):
            _login(db, "dr-a", PW, T0 + later)
    assert _login(db, "dr-a", PW, T0 + timedelta(minutes=15, seconds=5)).name == "dr-a"
    # a success resets the count: four more failures do not lock
    for i in range(4):
        with pytest.raises(auth.LoginFailed):
            _login(db, "dr-a", "wrong again!!", T0 + timedelta(minutes=20, seconds=i))
    assert _login(db, "dr-a", PW, T0 + timedelta(minutes=21)).name == "dr-a"


def test_reset_password_lifts_a_lockout(db):
    with db.begin() as s:
        auth.create_user(s, "dr-a", "sme", PW)
    for i in range(5):
        with pytest.raises(auth.LoginFailed):
            _login(db, "dr-a", "wrong password!", T0)
    with db.begin() as s:
        auth.reset_password(s, "dr-a", "a brand new password")
    assert _login(db, "dr-a", "a brand new password", T0 + timedelta(minutes=1)).name == "dr-a"


def test_disabled_user_is_refused_and_can_be_enabled(db):
    with db.begin() as s:
        auth.create_user(s, "boss", "admin", PW)
        auth.create_user(s, "dr-a", "sme", PW)
        assert auth.disable_user(s, "dr-a").disabled is True
    with pytest.raises(auth.AccountDisabled, match="'dr-a' is disabled"):
        _login(db, "dr-a", PW, T0)
    with pytest.raises(auth.LoginFailed, match="^User name or password is wrong.$"):  # says nothing without the pw
        _login(db, "dr-a", "not the password", T0)
    with db.begin() as s:
        assert auth.get_user(s, "dr-a").disabled is True
        auth.enable_user(s, "dr-a")
    assert _login(db, "dr-a", PW, T0).disabled is False


def test_the_last_admin_cannot_be_disabled_or_demoted(db):
    with db.begin() as s:
        auth.create_user(s, "boss", "admin", PW)
        with pytest.raises(auth.AccountError, match="only enabled administrator"):
            auth.disable_user(s, "boss")
        with pytest.raises(auth.AccountError, match="only enabled administrator"):
            auth.set_role(s, "boss", "sme")
        auth.create_user(s, "boss2", "admin", PW)
        assert auth.set_role(s, "boss", "researcher").role == "researcher"


def test_account_management_errors_and_list(db):
    with db.begin() as s:
        auth.create_user(s, "b-user", "researcher", PW)
        auth.create_user(s, "a-user", "reviewer", None)
        with pytest.raises(auth.AccountError, match="already exists"):
            auth.create_user(s, "a-user", "sme", PW)
        with pytest.raises(auth.AccountError, match="role 'boss'; expected one of reviewer, sme, researcher, admin"):
            auth.create_user(s, "c-user", "boss", PW)
        with pytest.raises(auth.AccountError, match="no user named 'ghost'"):
            auth.set_role(s, "ghost", "sme")
        with pytest.raises(storage.StorageError, match="role 'boss'"):  # storage asks the same table
            storage.add_reader(s, "d-user", "boss")
        assert storage.add_reader(s, "e-user", "researcher").role == "researcher"
    with db() as s:
        assert [(u.name, u.role) for u in auth.list_users(s)] == [
            ("a-user", "reviewer"), ("b-user", "researcher"), ("e-user", "researcher")]
        assert auth.account_status(s, "a-user") == "no password"
        assert auth.account_status(s, "b-user") == "active"


def test_first_admin_setup_code_flow(db, caplog):
    engine = db.kw["bind"]
    with db.begin() as s:
        storage.add_reader(s, "old-admin", "admin")  # an admin from before logins has no password
        assert not auth.admin_exists(s)
    with caplog.at_level(logging.WARNING, logger="cxr_core.auth.accounts"):
        code = auth.setup_code(engine)
    assert code and code in caplog.text  # printed in the server log
    assert auth.setup_code(engine) == code  # one code per process and database
    with pytest.raises(auth.SetupCodeError, match="setup code is wrong"):
        with db.begin() as s:
            auth.create_first_admin(s, "0000-0000-0000", "root", PW)
    with pytest.raises(auth.PasswordTooShort):
        with db.begin() as s:
            auth.create_first_admin(s, code, "root", "short")
    with db.begin() as s:
        admin = auth.create_first_admin(s, code.lower().replace("-", " "), "root", PW)  # typed loosely
    assert admin.role == "admin" and _login(db, "root", PW, T0) == admin
    assert auth.setup_code(engine) is None  # an admin exists: no code any more
    with pytest.raises(auth.SetupCodeError, match="already exists"):
        with db.begin() as s:
            auth.create_first_admin(s, code, "second", PW)


def test_first_admin_may_claim_an_old_reader_without_password(db):
    engine = db.kw["bind"]
    with db.begin() as s:
        old = storage.add_reader(s, "dr-old", "sme")
    code = auth.setup_code(engine)
    with db.begin() as s:
        admin = auth.create_first_admin(s, code, "dr-old", PW)
    assert (admin.id, admin.role) == (old.id, "admin")  # the same reader: their annotations stay theirs


def test_idle_timeout_from_settings(monkeypatch):
    assert auth.IDLE_TIMEOUT_S == 30 * 60
    assert not auth.idle_expired(1000.0, 1000.0 + 30 * 60)
    assert auth.idle_expired(1000.0, 1000.0 + 30 * 60 + 1)
    assert auth.idle_expired(None, 0.0)
    monkeypatch.setenv("CXR_IDLE_TIMEOUT_MIN", "5")
    assert auth.IDLE_TIMEOUT_S == 300 and auth.idle_expired(0.0, 301.0)
    monkeypatch.setenv("CXR_IDLE_TIMEOUT_MIN", "soon")
    with pytest.raises(SettingsError, match="CXR_IDLE_TIMEOUT_MIN='soon'"):
        get_settings()


# --- OIDC ------------------------------------------------------------------------------------


@pytest.fixture
def oidc_settings(monkeypatch):
    monkeypatch.setenv("CXR_AUTH", "oidc")
    monkeypatch.setenv("CXR_OIDC_ROLE_MAP", "cxr-admins=admin, cxr-sme=sme,cxr-research=researcher")
    settings = get_settings()
    assert settings.auth == "oidc" and settings.oidc_role_claim == "roles"
    return settings


def test_oidc_claims_map_to_roles_deny_by_default(db, oidc_settings):
    claims = {"is_logged_in": True, "email": "ann@hospital.org", "sub": "1", "roles": ["staff", "cxr-sme"]}
    with db.begin() as s:
        ann = auth.user_from_oidc(s, claims, oidc_settings)
        assert (ann.name, ann.role) == ("ann@hospital.org", "sme")
        assert auth.user_from_oidc(s, claims, oidc_settings).id == ann.id  # the same user next time
        for roles in (["staff"], [], "cxr-admin", None, ["CXR-SME"]):  # unmapped, empty, near miss, absent
            with pytest.raises(auth.Forbidden, match="carries no role for CXR Review"):
                auth.user_from_oidc(s, {**claims, "email": "bob@hospital.org", "roles": roles}, oidc_settings)
        assert auth.get_user(s, "bob@hospital.org") is None  # refused identities leave nothing behind
        both = auth.user_from_oidc(s, {**claims, "email": "cy@h.org", "roles": ["cxr-sme", "cxr-admins"]},
                                   oidc_settings)
        assert both.role == "admin"  # the most trusted mapped role
        # the identity provider changes the role: it follows at the next sign-in
        assert auth.user_from_oidc(s, {**claims, "roles": "cxr-research"}, oidc_settings).role == "researcher"
        with pytest.raises(auth.Forbidden, match="no 'email' claim"):
            auth.user_from_oidc(s, {"is_logged_in": True, "roles": ["cxr-sme"]}, oidc_settings)
        with pytest.raises(auth.Forbidden, match="^Log in first"):
            auth.user_from_oidc(s, {"is_logged_in": False}, oidc_settings)
        auth.disable_user(s, "ann@hospital.org")
        with pytest.raises(auth.Forbidden, match="disabled"):
            auth.user_from_oidc(s, claims, oidc_settings)


def test_oidc_nested_claim_and_no_mapping_denies(db, oidc_settings, monkeypatch):
    nested = replace(oidc_settings, oidc_role_claim="realm_access.roles")
    claims = {"email": "kc@h.org", "realm_access": {"roles": ["cxr-admins"]}}
    with db.begin() as s:
        assert auth.user_from_oidc(s, claims, nested).role == "admin"
        with pytest.raises(auth.Forbidden):
            auth.user_from_oidc(s, claims, replace(nested, oidc_role_map=()))  # nothing mapped: nobody gets in
    monkeypatch.setenv("CXR_OIDC_ROLE_MAP", "cxr-admins=root")
    with pytest.raises(SettingsError, match="entry 'cxr-admins=root'; expected CLAIM_VALUE=ROLE"):
        get_settings()
    monkeypatch.setenv("CXR_AUTH", "ldap")
    with pytest.raises(SettingsError, match="CXR_AUTH='ldap'; expected one of local, oidc"):
        get_settings()


def test_logins_and_failures_are_in_the_trail(db):
    with db.begin() as s:
        auth.create_user(s, "dr-a", "sme", PW)
    _login(db, "dr-a", PW, T0)
    with pytest.raises(auth.LoginFailed):
        _login(db, "dr-a", "not it at all", T0 + timedelta(seconds=1))
    with pytest.raises(auth.LoginFailed):
        _login(db, "mallory", "not it at all", T0 + timedelta(seconds=2))
    with db() as s:
        got = [(e.who, e.action, e.detail) for e in auth.events(s, since=T0) if e.action.startswith("login")]
        assert [e.detail for e in auth.events(s, action="user_change")] == ["added 'dr-a' as sme"]
    assert got == [("dr-a", "login", "app"), ("dr-a", "login_failed", "app: wrong password"),
                   ("mallory", "login_failed", "app: unknown user")]
    assert accounts.MAX_FAILURES == 5 and accounts.LOCKOUT == timedelta(minutes=15)
