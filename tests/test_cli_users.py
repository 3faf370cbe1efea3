"""``python -m cxr_core users ...`` end to end in subprocesses, and the login every database-reading
command (``report``) asks for: ``--user`` with the password from CXR_PASSWORD or standard input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from cxr_core import auth, storage

PW = "operator chose this one"


@pytest.fixture
def cli(tmp_path):
    url = f"sqlite:///{tmp_path / 'users.db'}"
    env = {k: v for k, v in os.environ.items() if k != "CXR_PASSWORD"}
    env.update(CXR_DATABASE_URL=url, CXR_DATA_DIR=str(tmp_path / "data"), CXR_WEIGHTS_DIR=str(tmp_path / "w"))

    def run(*args: str, stdin: str = "", extra_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cxr_core", *args], cwd=REPO, env={**env, **(extra_env or {})},
                              input=stdin, capture_output=True, text=True, timeout=300)

    run.url = url
    return run


def _factory(url):
    return storage.session_factory(storage.make_engine(url))


def test_users_commands_end_to_end(cli):
    add = cli("users", "add", "boss", "--role", "admin", "--password-stdin", stdin=PW + "\n")
    assert add.returncode == 0 and add.stdout.strip() == "added boss as admin", add.stderr
    assert cli("users", "add", "dr-a", "--role", "sme", "--password-stdin", stdin=PW).returncode == 0
    nopw = cli("users", "add", "rita", "--role", "researcher")
    assert nopw.returncode == 0 and "no password" in nopw.stdout

    listed = cli("users", "list")
    assert listed.returncode == 0
    lines = [line.split(None, 2) for line in listed.stdout.splitlines()]
    assert lines == [["boss", "admin", "active"], ["dr-a", "sme", "active"], ["rita", "researcher", "no password"]]

    factory = _factory(cli.url)
    with factory() as s:  # the password typed on stdin is the one stored (argon2id), newline excluded
        assert auth.authenticate(s, "dr-a", PW).role == "sme"
        assert storage.get_reader(s, "boss").password_hash.startswith("$argon2id$")

    assert cli("users", "set-role", "dr-a", "researcher").stdout.strip() == "dr-a is now researcher"
    assert cli("users", "disable", "dr-a").returncode == 0
    assert "disabled" in cli("users", "list").stdout.splitlines()[1]
    with pytest.raises(auth.AccountDisabled), factory() as s:
        auth.authenticate(s, "dr-a", PW)
    assert cli("users", "enable", "dr-a").returncode == 0
    reset = cli("users", "reset-password", "rita", "--password-stdin", stdin="rita's own long password\n")
    assert reset.returncode == 0 and reset.stdout.strip() == "password of rita set"
    with factory() as s:  # authenticate commits its own outcome: a plain session, usable afterwards
        assert auth.authenticate(s, "rita", "rita's own long password").role == "researcher"
        assert auth.get_user(s, "dr-a") == auth.User(auth.get_user(s, "dr-a").id, "dr-a", "researcher", False)
        changes = [e.detail for e in auth.events(s, action="user_change")]
    assert changes == ["added 'boss' as admin", "added 'dr-a' as sme", "added 'rita' as researcher without a password",
                       "role of 'dr-a': sme -> researcher", "disabled 'dr-a'", "enabled 'dr-a'",
                       "password of 'rita' set"]
    factory.kw["bind"].dispose()


@pytest.mark.parametrize("args, stdin, message", [
    (["add", "x", "--role", "sme", "--password-stdin"], "short\n", "has 5 characters; it needs at least 12"),
    (["add", "x", "--role", "sme", "--password-stdin"], "", "no password on standard input"),
    (["add", "boss", "--role", "sme", "--password-stdin"], PW, "a reader named 'boss' already exists"),
    (["set-role", "ghost", "sme"], "", "no user named 'ghost'"),
    (["disable", "boss"], "", "'boss' is the only enabled administrator"),
    (["reset-password", "boss", "--password-stdin"], "too short\n", "it needs at least 12"),
])
def test_bad_requests_exit_2_with_one_line_and_change_nothing(cli, args, stdin, message):
    factory = _factory(cli.url)
    with factory.begin() as s:
        auth.create_user(s, "boss", "admin", PW)
    proc = cli("users", *args, stdin=stdin)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1
    with factory() as s:
        assert [(u.name, u.role, u.disabled) for u in auth.list_users(s)] == [("boss", "admin", False)]
        assert auth.authenticate(s, "boss", PW).name == "boss"
    factory.kw["bind"].dispose()


def test_a_role_outside_the_table_is_refused_by_argparse(cli):
    proc = cli("users", "add", "x", "--role", "superuser", "--password-stdin", stdin=PW)
    assert proc.returncode == 2 and "invalid choice: 'superuser'" in proc.stderr


def test_report_needs_a_logged_in_researcher_or_admin(cli, tmp_path):
    for name, role in (("rev", "reviewer"), ("res", "researcher"), ("boss", "admin")):
        assert cli("users", "add", name, "--role", role, "--password-stdin", stdin=PW).returncode == 0
    out = tmp_path / "r.csv"
    report = ["report", "--session", "Nope", "--format", "csv", "--out", str(out), "--no-compute"]

    def refused(*args, stdin="", env=None):
        proc = cli(*report, *args, stdin=stdin, extra_env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
        return proc.stderr

    assert "`report` reads the annotation database, so it needs --user NAME" in refused()
    assert "no password for --user res: set $CXR_PASSWORD or pipe it" in refused("--user", "res")
    assert "User name or password is wrong." in refused("--user", "res", env={"CXR_PASSWORD": "not the password"})
    assert "User name or password is wrong." in refused("--user", "nobody", env={"CXR_PASSWORD": PW})
    assert "Your role (reviewer) may not run the report command" in refused("--user", "rev", stdin=PW + "\n")
    assert "you (res, researcher) may only give your own name" in refused(
        "--user", "res", "--reader", "dr-b", env={"CXR_PASSWORD": PW})
    # past the gate (password on stdin): now the command's own checks answer
    assert "no ready model is registered" in refused("--user", "res", stdin=PW + "\n")
    assert "no ready model is registered" in refused("--user", "boss", "--reader", "dr-b", env={"CXR_PASSWORD": PW})
    assert not out.exists()
    factory = _factory(cli.url)
    with factory() as s:
        failures = [(e.who, e.detail) for e in auth.events(s, action="login_failed")]
        logins = [(e.who, e.detail) for e in auth.events(s, action="login")]
    assert failures == [("res", "cli report: wrong password"), ("nobody", "cli report: unknown user")]
    assert logins == [("rev", "cli report"), ("res", "cli report"), ("res", "cli report"), ("boss", "cli report")]
    factory.kw["bind"].dispose()
