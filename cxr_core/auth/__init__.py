"""Who is who: accounts and logins, the roles x actions table, the audit trail (no Streamlit here).

- :mod:`~cxr_core.auth.roles`: :data:`ROLES`, the one :data:`ACTIONS` table, :func:`can`,
  :func:`pages_for`, :func:`require`, :class:`User`, :class:`Forbidden`.
- :mod:`~cxr_core.auth.passwords`: argon2id hashes, at least 12 characters, no default password.
- :mod:`~cxr_core.auth.accounts`: create, list, disable, set role, reset password; :func:`authenticate`
  with a 15-minute lockout after 5 failures; the first-admin setup code; users from OIDC claims.
- :mod:`~cxr_core.auth.trail`: the append-only audit trail (:func:`record`, :func:`events`, CSV).
- :mod:`~cxr_core.auth.idle`: the idle timeout. :mod:`~cxr_core.auth.cli_identity`: ``--user`` for
  CLI commands that read the database.

The roles table loads at once; the parts that need the database load on first use, so
:mod:`cxr_core.storage.schema` can take :data:`ROLES` from here without an import cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cxr_core.auth.roles import ACTION_WORDS, ACTIONS, ROLES, Forbidden, User, can, pages_for, require

_LAZY = {
    "passwords": ("MIN_LENGTH", "PasswordRejected", "PasswordTooShort", "hash_password", "verify_password"),
    "accounts": ("AccountDisabled", "AccountError", "LockedOut", "LoginFailed", "SetupCodeError", "account_status",
                 "admin_exists", "authenticate", "create_first_admin", "create_user", "disable_user", "enable_user",
                 "get_user", "list_users", "reset_password", "role_from_claims", "set_role", "setup_code",
                 "user_from_oidc", "MAX_FAILURES", "LOCKOUT"),
    "trail": ("AUDIT_ACTIONS", "Event", "TrailError", "events", "events_csv", "record"),
    "idle": ("idle_expired", "idle_timeout_s"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["ACTIONS", "ACTION_WORDS", "ROLES", "Forbidden", "User", "can", "pages_for", "require",
           "IDLE_TIMEOUT_S", *_WHERE]

if TYPE_CHECKING:
    from cxr_core.auth.accounts import (  # noqa: F401
        LOCKOUT, MAX_FAILURES, AccountDisabled, AccountError, LockedOut, LoginFailed, SetupCodeError, account_status,
        admin_exists, authenticate, create_first_admin, create_user, disable_user, enable_user, get_user, list_users,
        reset_password, role_from_claims, set_role, setup_code, user_from_oidc,
    )
    from cxr_core.auth.idle import idle_expired, idle_timeout_s  # noqa: F401
    from cxr_core.auth.passwords import (  # noqa: F401
        MIN_LENGTH, PasswordRejected, PasswordTooShort, hash_password, verify_password,
    )
    from cxr_core.auth.trail import AUDIT_ACTIONS, Event, TrailError, events, events_csv, record  # noqa: F401

    IDLE_TIMEOUT_S: int


def __getattr__(name: str) -> Any:
    if name == "IDLE_TIMEOUT_S":  # read from the settings at each access, so the environment can change it
        from cxr_core.auth.idle import idle_timeout_s

        return idle_timeout_s()
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cxr_core.auth' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cxr_core.auth.{module}"), name)
    globals()[name] = value  # next time without this hook
    return value
