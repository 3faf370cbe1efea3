"""The roles x actions table: tests generated from it, every role and every action, allowed and refused.

The expectations are written out here from the issue, independently of the table, so a row changed
by mistake in ``cxr_core/auth/roles.py`` fails a test rather than silently changing who may do what.
"""

from __future__ import annotations

import pytest

from cxr_core import auth
from cxr_core.auth import ACTIONS, ROLES, Forbidden, User, can, pages_for, require

# What the issue grants each role (admin: everything).
EXPECTED = {
    "reviewer": {"page:review", "page:models"},
    "sme": {"page:review", "page:models", "page:annotate"},
    "researcher": {"page:review", "page:models", "page:agreement", "page:audit", "export:agreement", "export:audit",
                   "export:session_report", "cli:report", "cli:agree", "cli:audit"},
    "admin": set(ACTIONS),
}
CASES = [(role, action) for role in ROLES for action in ACTIONS]


def test_roles_and_actions_are_the_contracts():
    assert ROLES == ("reviewer", "sme", "researcher", "admin")
    assert set(EXPECTED) == set(ROLES)
    pages = [a for a in ACTIONS if a.startswith("page:")]
    assert pages == ["page:review", "page:models", "page:annotate", "page:agreement", "page:audit", "page:sessions",
                     "page:users", "page:trail"]
    assert {a for a in ACTIONS if a.startswith("export:")} == {
        "export:agreement", "export:audit", "export:session_report", "export:trail"}
    assert set(auth.ACTION_WORDS) == set(ACTIONS)  # every refusal can say what was refused


@pytest.mark.parametrize("role, action", CASES, ids=[f"{r}-{a}" for r, a in CASES])
def test_every_role_and_action(role, action):
    allowed = action in EXPECTED[role]
    assert can(role, action) is allowed
    user = User(id=1, name="pat", role=role, disabled=False)
    if allowed:
        require(user, action)  # no exception
    else:
        with pytest.raises(Forbidden) as exc:
            require(user, action)
        message = str(exc.value)
        assert message.startswith(f"Your role ({role}) may not {auth.ACTION_WORDS[action]}")
        assert "admin" in message  # says who may


@pytest.mark.parametrize("action", list(ACTIONS))
def test_nobody_and_disabled_users_are_refused_everything(action):
    assert can(None, action) is False and can("guest", action) is False
    with pytest.raises(Forbidden, match="^Log in first"):
        require(None, action)
    with pytest.raises(Forbidden, match="'ann' is disabled"):
        require(User(2, "ann", "admin", disabled=True), action)


@pytest.mark.parametrize("role", ROLES)
def test_pages_for_lists_the_allowed_pages_in_table_order(role):
    want = [a for a in ACTIONS if a.startswith("page:") and a in EXPECTED[role]]
    assert pages_for(role) == want
    assert pages_for(None) == []


def test_an_unknown_action_is_a_programming_error_not_a_refusal():
    with pytest.raises(ValueError, match="unknown action 'page:reveiw'"):
        can("admin", "page:reveiw")
    with pytest.raises(ValueError, match="unknown action"):
        require(User(1, "a", "admin"), "export:everything")


def test_storage_takes_its_roles_from_the_one_table():
    from cxr_core import storage
    from cxr_core.storage.schema import Reader

    assert storage.ROLES is ROLES
    check = next(c for c in Reader.__table__.constraints if getattr(c, "sqltext", None) is not None)
    assert all(f"'{r}'" in str(check.sqltext) for r in ROLES)
