"""``users``: the operator's tool for accounts (add, list, disable, enable, set-role, reset-password).

Whoever holds the database file (or its PostgreSQL credentials) runs it, so it asks for no login;
every change is recorded in the audit trail with no user name (the operator). Passwords are read
from standard input (``--password-stdin``: the first line), never from the command line.
"""

from __future__ import annotations

import sys

from cxr_core.auth.roles import ROLES


def register(sub) -> None:
    p = sub.add_parser("users", help="manage user accounts (operator tool: whoever holds the database)",
                       description="Add, list, disable, enable users, change roles, reset passwords. "
                                   "Roles: reviewer (review, models), sme (reads films in sessions), researcher "
                                   "(agreement, audit, exports), admin (everything, users and sessions).")
    actions = p.add_subparsers(dest="users_action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password (12 characters or more) from the first line of standard input; "
                          "without it the user has no password and cannot log in until reset-password")
    add.set_defaults(func=run_add)
    ls = actions.add_parser("list", help="list users with role and status")
    ls.set_defaults(func=run_list)
    for name, helptext, func in (("disable", "disable a user (no more logins)", run_disable),
                                 ("enable", "enable a disabled user", run_enable)):
        q = actions.add_parser(name, help=helptext)
        q.add_argument("name")
        q.set_defaults(func=func)
    role = actions.add_parser("set-role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    role.set_defaults(func=run_set_role)
    reset = actions.add_parser("reset-password", help="set a new password (also lifts a lockout)")
    reset.add_argument("name")
    reset.add_argument("--password-stdin", action="store_true", required=True,
                       help="read the new password from the first line of standard input")
    reset.set_defaults(func=run_reset)


def _factory():
    from cxr_core.storage import make_engine, session_factory

    return session_factory(make_engine())


def _password_from_stdin() -> str:
    from cxr_core.auth.passwords import PasswordRejected

    if sys.stdin is not None and sys.stdin.isatty():  # typed by hand: not echoed
        import getpass

        password = getpass.getpass("Password (12 characters or more): ")
    else:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        password = line.rstrip("\r\n")
    if not password:
        raise PasswordRejected("no password on standard input; pipe it in, e.g. `users add NAME --role sme "
                               "--password-stdin < file`")
    return password


def run_add(args) -> int:
    from cxr_core.auth import accounts

    password = _password_from_stdin() if args.password_stdin else None
    with _factory().begin() as s:
        user = accounts.create_user(s, args.name, args.role, password)
    note = "" if password is not None else " (no password: set one with `users reset-password` before they log in)"
    print(f"added {user.name} as {user.role}{note}")
    return 0


def run_list(args) -> int:
    from cxr_core.auth import accounts
    from cxr_core.storage import read_transaction

    with read_transaction(_factory()) as s:
        rows = [(u.name, u.role, accounts.account_status(s, u.name)) for u in accounts.list_users(s)]
    if not rows:
        print("no users yet: add one with `python -m cxr_core users add NAME --role admin --password-stdin`")
    width = max([len(r[0]) for r in rows] + [4])
    for name, role, status in rows:
        print(f"{name:<{width}}  {role:<10}  {status}")
    return 0


def run_disable(args) -> int:
    from cxr_core.auth import accounts

    with _factory().begin() as s:
        accounts.disable_user(s, args.name)
    print(f"disabled {args.name}")
    return 0


def run_enable(args) -> int:
    from cxr_core.auth import accounts

    with _factory().begin() as s:
        accounts.enable_user(s, args.name)
    print(f"enabled {args.name}")
    return 0


def run_set_role(args) -> int:
    from cxr_core.auth import accounts

    with _factory().begin() as s:
        user = accounts.set_role(s, args.name, args.role)
    print(f"{user.name} is now {user.role}")
    return 0


def run_reset(args) -> int:
    from cxr_core.auth import accounts

    password = _password_from_stdin()
    with _factory().begin() as s:
        accounts.reset_password(s, args.name, password)
    print(f"password of {args.name} set")
    return 0
