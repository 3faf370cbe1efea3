"""The users page under AppTest: an administrator adds, re-roles, resets and disables users; each change is in
the trail; names show as typed; other roles cannot open it."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from auth_helpers import PASSWORD, login
from conftest import REPO
from cxr_core import auth, storage

TIMEOUT = 120


@pytest.fixture
def db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    return storage.session_factory(storage.make_engine(url))


def open_users(name: str = "Admin A", role: str = "admin") -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name=name, role=role)
    at.run()
    at.switch_page("pages/users.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def users(db) -> dict[str, auth.User]:
    with db() as s:
        return {u.name: u for u in auth.list_users(s)}


def trail(db) -> list[tuple[str | None, str]]:
    with db() as s:
        return [(e.who, e.detail) for e in auth.events(s, action="user_change")]


def table(at: AppTest, key: str) -> dict[str, list]:
    frame = at.dataframe[["users_roles_table", "users_table"].index(key)].value  # in page order
    return {c: list(frame[c]) for c in frame.columns}


def add(at: AppTest, name: str, role: str, password: str = PASSWORD, again: str | None = None) -> AppTest:
    at.text_input(key="users_new_name").input(name)
    at.selectbox(key="users_new_role").select(role)
    at.text_input(key="users_new_password").input(password)
    at.text_input(key="users_new_again").input(password if again is None else again)
    next(b for b in at.button if b.label == "Add user").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_an_administrator_adds_a_user_who_can_then_log_in(db):
    at = open_users()
    assert at.title[0].value == "Users" and "administrators" in at.caption[0].value
    roles = table(at, "users_roles_table")
    assert roles["Role"] == list(auth.ROLES)
    assert "open the Annotate page" in roles["May"][auth.ROLES.index("sme")]
    assert "open the Annotate page" not in roles["May"][auth.ROLES.index("reviewer")]
    add(at, "Dr B", "sme")
    assert at.success[0].value == "Added Dr B (sme)."
    assert table(at, "users_table") == {"Name": ["Admin A", "Dr B"], "Role": ["admin", "sme"],
                                        "Account": ["active", "active"]}
    with db.begin() as s:
        assert auth.authenticate(s, "Dr B", PASSWORD).role == "sme"
    assert ("Admin A", "added 'Dr B' as sme") in trail(db)


def test_bad_input_adds_nobody_and_says_why(db):
    at = open_users()
    add(at, "Dr C", "sme", again="something else entirely")
    assert "the two passwords differ" in at.error[0].value
    add(at, "Dr C", "sme", password="short", again="short")
    assert "User not added" in at.error[0].value and "12" in at.error[0].value
    add(at, "Admin A", "sme")
    assert "already exists" in at.error[0].value
    assert set(users(db)) == {"Admin A"}


def test_role_password_and_disable_are_changed_and_recorded(db):
    at = open_users()
    add(at, "Dr B", "sme")
    at.selectbox(key="users_pick").select("Dr B").run()
    at.selectbox(key="users_role").select("researcher").run()
    next(b for b in at.button if b.label == "Set role").click().run()
    assert at.success[0].value == "Dr B is now researcher."
    assert users(db)["Dr B"].role == "researcher"

    new_password = "a brand new long password"
    at.text_input(key="users_reset_password").input(new_password)
    at.text_input(key="users_reset_again").input(new_password)
    next(b for b in at.button if b.label == "Reset password").click().run()
    with db.begin() as s:
        assert auth.authenticate(s, "Dr B", new_password).name == "Dr B"

    next(b for b in at.button if b.label == "Disable account").click().run()
    assert users(db)["Dr B"].disabled
    assert table(at, "users_table")["Account"] == ["active", "disabled"]
    next(b for b in at.button if b.label == "Enable account").click().run()
    assert not users(db)["Dr B"].disabled
    details = [d for who, d in trail(db) if who == "Admin A"]
    assert details == ["added 'Dr B' as sme", "role of 'Dr B': sme -> researcher", "password of 'Dr B' set",
                       "disabled 'Dr B'", "enabled 'Dr B'"]


def test_an_administrator_cannot_disable_or_demote_themselves(db):
    at = open_users()
    at.selectbox(key="users_pick").select("Admin A").run()
    assert next(b for b in at.button if b.label == "Disable account").disabled
    at.selectbox(key="users_role").select("sme").run()
    assert next(b for b in at.button if b.label == "Set role").disabled


def test_names_are_plain_text_never_markdown(db):
    at = open_users()
    add(at, "**Bold** [x](http://e)", "reviewer")
    assert at.success[0].value == r"Added \*\*Bold\*\* \[x\]\(http\://e\) (reviewer)."
    at.selectbox(key="users_pick").select("**Bold** [x](http://e)").run()
    assert "**Bold** [x](http://e): reviewer, active" in [t.value for t in at.text]
    assert not [m for m in at.markdown if "**Bold**" in m.value]


@pytest.mark.parametrize("role", [r for r in auth.ROLES if not auth.can(r, "page:users")])
def test_other_roles_cannot_open_it(db, role):
    at = AppTest.from_file(str(REPO / "pages" / "users.py"), default_timeout=TIMEOUT)
    login(at, name=f"{role} user", role=role)
    at.run()
    assert not at.exception
    with pytest.raises(auth.Forbidden) as refusal:
        auth.require(auth.User(0, "x", role), "page:users")
    assert [e.value for e in at.error] == [str(refusal.value)]
    assert not at.title and not at.dataframe and not at.text_input
