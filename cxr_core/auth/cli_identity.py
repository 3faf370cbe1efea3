"""Who runs a CLI command that reads the annotation database: ``--user NAME`` and a password.

The password comes from the ``CXR_PASSWORD`` environment variable or, when that is not set, from the
first line of standard input when it is not a terminal (``... --user ann < pwfile``); it is never a
command-line argument (others could read it in the process list). The user is checked with the same
accounts, lockout and roles x actions table as the app, and the attempt is recorded in the trail. A
command needs two lines: :func:`add_user_argument` in ``register`` and :func:`cli_user` first in
``run``; a refusal is a :class:`~cxr_core.errors.CXRError`, so the CLI exits 2 with its message.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from cxr_core.auth.roles import Forbidden, User, require

PASSWORD_ENV = "CXR_PASSWORD"


class CLIIdentityError(Forbidden):
    """No user named, or no password given, for a command that needs one."""


def add_user_argument(parser: Any) -> None:
    """Add ``--user NAME`` to a subcommand's parser."""
    parser.add_argument("--user", metavar="NAME",
                        help=f"your CXR Review user name (required); the password is read from ${PASSWORD_ENV} "
                             "or, if that is unset, from the first line of standard input")


def read_password(stdin: TextIO | None = None) -> str | None:
    """The password from ``CXR_PASSWORD``, else the first line of a non-terminal stdin, else ``None``."""
    if PASSWORD_ENV in os.environ:
        return os.environ[PASSWORD_ENV]
    stream = sys.stdin if stdin is None else stdin
    if stream is None or stream.closed or stream.isatty():
        return None
    line = stream.readline()
    return line.rstrip("\r\n") or None


def cli_user(args: Any, action: str, *, factory: Any = None, stdin: TextIO | None = None) -> User:
    """The logged-in user for ``action`` (e.g. ``"cli:report"``), or a refusal.

    ``factory`` defaults to a session factory on the configured database (``CXR_DATABASE_URL``).
    """
    from cxr_core.auth.accounts import authenticate
    from cxr_core.storage import make_engine, session_factory

    command = action.split(":", 1)[-1]
    name = (getattr(args, "user", None) or "").strip()
    if not name:
        raise CLIIdentityError(f"`{command}` reads the annotation database, so it needs --user NAME, with the "
                               f"password in ${PASSWORD_ENV} or on standard input")
    password = read_password(stdin)
    if password is None:
        raise CLIIdentityError(f"no password for --user {name}: set ${PASSWORD_ENV} or pipe it on standard input")
    factory = factory or session_factory(make_engine())
    with factory() as s:  # authenticate commits its outcome itself
        user = authenticate(s, name, password, via=f"cli {command}")
    require(user, action)
    return user


def check_view_as(user: User, reader: str | None) -> None:
    """A command's ``--reader NAME`` (output as that reader may see it) is the user's own name, or the
    user is an administrator: anyone else could get around their own blind readings by naming a colleague."""
    if reader is not None and reader.strip() != user.name and user.role != "admin":
        raise Forbidden(f"--reader {reader} shows what {reader} may see; you ({user.name}, {user.role}) may only "
                        f"give your own name (or leave it out), so films pending in your blind readings stay hidden")


def record_cli(user: User, action: str, *, detail: str = "", factory: Any = None) -> None:
    """Record ``action`` (an audit action such as ``export``) by ``user`` in its own transaction."""
    from cxr_core.auth.trail import record
    from cxr_core.storage import make_engine, session_factory

    factory = factory or session_factory(make_engine())
    with factory.begin() as s:
        record(s, user.name, action, detail=detail)
