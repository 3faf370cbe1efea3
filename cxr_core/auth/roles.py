"""Who may do what: the one roles x actions table, asked by every page, download and CLI command.

The table is data (as CVAT keeps its permission matrices): :data:`ACTIONS` maps each action to the
roles allowed it, and the tests are generated from it, for every role and every action, allowed
and refused. A page or command never re-states a rule: it calls :func:`can` or :func:`require`.

This module imports nothing from the database, so :mod:`cxr_core.storage.schema` can take
:data:`ROLES` from here for its check constraint without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr_core.errors import CXRError

#: Every role, least to most trusted (used to choose one role when an OIDC token maps to several).
ROLES = ("reviewer", "sme", "researcher", "admin")

_REVIEWER = frozenset({"reviewer"})
_SME = frozenset({"sme"})
_RESEARCHER = frozenset({"researcher"})
_ADMIN = frozenset({"admin"})

#: action -> roles allowed it. Admin is allowed everything; the order of the pages is the sidebar's.
ACTIONS: dict[str, frozenset[str]] = {
    "page:review": _REVIEWER | _SME | _RESEARCHER | _ADMIN,
    "page:models": _REVIEWER | _SME | _RESEARCHER | _ADMIN,
    "page:annotate": _SME | _ADMIN,
    "page:agreement": _RESEARCHER | _ADMIN,
    "page:audit": _RESEARCHER | _ADMIN,
    "page:sessions": _ADMIN,
    "page:users": _ADMIN,
    "page:trail": _ADMIN,
    "export:agreement": _RESEARCHER | _ADMIN,
    "export:audit": _RESEARCHER | _ADMIN,
    "export:session_report": _RESEARCHER | _ADMIN,
    "export:trail": _ADMIN,
    "model:register": _ADMIN,
    "session:manage": _ADMIN,
    "user:manage": _ADMIN,
    "cli:report": _RESEARCHER | _ADMIN,
    "cli:agree": _RESEARCHER | _ADMIN,
    "cli:audit": _RESEARCHER | _ADMIN,
    "cli:users": _ADMIN,
}

#: What each action is, in the words of a refusal ("Your role (reviewer) may not <this>.").
ACTION_WORDS: dict[str, str] = {
    "page:review": "open the Review page",
    "page:models": "open the Models page",
    "page:annotate": "open the Annotate page",
    "page:agreement": "open the Agreement page",
    "page:audit": "open the Dataset audit page",
    "page:sessions": "open the Reading sessions page",
    "page:users": "open the Users page",
    "page:trail": "open the Audit trail page",
    "export:agreement": "download agreement results",
    "export:audit": "download dataset audit results",
    "export:session_report": "download a session report",
    "export:trail": "download the audit trail",
    "model:register": "register a model",
    "session:manage": "create or change reading sessions",
    "user:manage": "add, change or disable users",
    "cli:report": "run the report command",
    "cli:agree": "run the agree command",
    "cli:audit": "run the audit command",
    "cli:users": "manage users from the command line",
}


class Forbidden(CXRError):
    """The user (or nobody logged in) may not do this; the message says so in plain words."""


@dataclass(frozen=True)
class User:
    """A logged-in person: ``id`` is ``readers.id`` (readers are the users)."""

    id: int
    name: str
    role: str
    disabled: bool = False


def _check_action(action: str) -> None:
    if action not in ACTIONS:  # a typo in a page must fail loudly, never fall through to "allowed"
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")


def can(role: str | None, action: str) -> bool:
    """Whether ``role`` may do ``action`` (``None`` or an unknown role: never)."""
    _check_action(action)
    return role is not None and role in ACTIONS[action]


def pages_for(role: str | None) -> list[str]:
    """The ``page:*`` actions ``role`` may open, in :data:`ACTIONS` order."""
    return [a for a in ACTIONS if a.startswith("page:") and can(role, a)]


def require(user: User | None, action: str) -> None:
    """Raise :class:`Forbidden` unless ``user`` is logged in, enabled and allowed ``action``."""
    _check_action(action)
    words = ACTION_WORDS[action]
    if user is None:
        raise Forbidden(f"Log in first: only a logged-in user may {words}.")
    if user.disabled:
        raise Forbidden(f"The account {user.name!r} is disabled, so it may not {words}; ask an administrator.")
    if not can(user.role, action):
        allowed = ", ".join(r for r in ROLES if r in ACTIONS[action])
        raise Forbidden(f"Your role ({user.role}) may not {words}; only {allowed} may.")
