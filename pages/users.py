"""Users (administrators): who may log in, with which role; add, change role, reset a password, disable."""

import streamlit as st

from cxr_core import auth
from cxr_core.errors import CXRError
from cxr_core.io.plain_text import md_escape
from ui import auth as ui_auth
from ui import common

me = ui_auth.require_page("page:users")

USERS_FLASH = "users_flash"

st.title("Users")
st.caption(
    "This page is for administrators: it lists everyone who may log in and their role, adds users, changes a "
    "role, sets a new password and disables an account. Readers are users: a reading session is assigned to "
    "users with the role sme. Every change is written to the audit trail. It shows no model output."
)
st.dataframe(
    {"Role": list(auth.ROLES), "May": [", ".join(auth.ACTION_WORDS[a] for a in auth.ACTIONS if auth.can(r, a))
                                       for r in auth.ROLES]},
    hide_index=True, key="users_roles_table",
)
flash = st.session_state.pop(USERS_FLASH, None)
if flash:
    st.success(flash, icon=":material/check_circle:")


def changed(message: str) -> None:
    """Show ``message`` after the rerun (the change and its trail event were committed together)."""
    st.session_state[USERS_FLASH] = message
    st.rerun()


with common.reading() as s:
    users = auth.list_users(s)
    status = {u.name: auth.account_status(s, u.name) for u in users}
st.subheader(f"Users ({len(users)})")
st.dataframe({"Name": [u.name for u in users], "Role": [u.role for u in users],
              "Account": [status[u.name] for u in users]},
             hide_index=True, key="users_table")  # cells are plain text, never markdown

with st.form("users_add", clear_on_submit=True):
    st.markdown("**Add a user**")
    name_col, role_col = st.columns([3, 1])
    new_name = name_col.text_input("User name", key="users_new_name")
    new_role = role_col.selectbox("Role", auth.ROLES, index=auth.ROLES.index("sme"), key="users_new_role")
    password = ui_auth.new_password("users_new", "Password (at least 12 characters)")
    add = st.form_submit_button("Add user", icon=":material/person_add:")
if add:
    try:
        if password is None:
            raise CXRError("the two passwords differ")
        with common.db().begin() as s:
            user = auth.create_user(s, new_name.strip(), new_role, password, by=me.name)
    except CXRError as err:
        st.error(f"User not added: {err}")
    else:
        changed(f"Added {md_escape(user.name)} ({user.role}).")

if users:
    st.subheader("Change a user")
    names = [u.name for u in users]
    by_name = {u.name: u for u in users}
    who = st.selectbox("User", names, key="users_pick")
    target = by_name[who]
    st.text(f"{target.name}: {target.role}, {status[target.name]}")
    self_change = target.name == me.name
    role_col, pw_col, off_col = st.columns(3, gap="large")
    with role_col:
        role = st.selectbox("New role", auth.ROLES, index=auth.ROLES.index(target.role), key="users_role")
        if st.button("Set role", key="users_set_role", disabled=self_change or role == target.role,
                     help="You cannot change your own role: ask another administrator."):
            try:
                with common.db().begin() as s:
                    auth.set_role(s, target.name, role, by=me.name)
            except CXRError as err:
                st.error(f"Role not changed: {err}")
            else:
                changed(f"{md_escape(target.name)} is now {role}.")
    with pw_col, st.form("users_reset", clear_on_submit=True, border=False):
        new_pw = ui_auth.new_password("users_reset", "New password")
        reset = st.form_submit_button("Reset password", icon=":material/key:")
    if reset:
        try:
            if new_pw is None:
                raise CXRError("the two passwords differ")
            with common.db().begin() as s:
                auth.reset_password(s, target.name, new_pw, by=me.name)
        except CXRError as err:
            pw_col.error(f"Password not reset: {err}")
        else:
            changed(f"New password set for {md_escape(target.name)}.")
    with off_col:
        st.caption("A disabled user can no longer log in, and a logged-in session stops at its next click; their "
                   "readings and trail events are kept.")
        if target.disabled:
            if st.button("Enable account", key="users_enable", icon=":material/person_check:"):
                with common.db().begin() as s:
                    auth.enable_user(s, target.name, by=me.name)
                changed(f"{md_escape(target.name)} is enabled again.")
        elif st.button("Disable account", key="users_disable", disabled=self_change, icon=":material/person_off:",
                       help="You cannot disable your own account."):
            try:
                with common.db().begin() as s:
                    auth.disable_user(s, target.name, by=me.name)
            except CXRError as err:
                st.error(f"Not disabled: {err}")
            else:
                changed(f"{md_escape(target.name)} is disabled.")
