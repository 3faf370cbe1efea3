"""Readers become users who log in (password, disabled, lockout), the researcher role, the audit trail.

- ``readers``: ``password_hash`` (argon2id, NULL until an administrator sets one: existing readers keep
  every annotation but cannot log in before that), ``disabled``, ``failed_logins``, ``locked_until``;
  the role check admits ``researcher``.
- ``audit_events``: the append-only trail (who, when, what, which film, detail); triggers refuse UPDATE
  and DELETE whatever client writes, as for annotations.

SQLite cannot change a check constraint in place, and ``readers`` is referenced by sessions and
queues, so Alembic's batch mode (copy, drop, rename) would fail on the drop with foreign keys on (they
are, and cannot be switched off inside the migration's transaction). Instead foreign-key checks are
deferred to the commit, the rows are copied aside, ``readers`` is dropped and created again under its
own name, and refilled with the same ids: each row put back clears the violations its drop counted,
so the commit succeeds only if every reference has its reader again.

Downgrade drops the audit trail and the password columns (accounts then have no passwords), and is
refused while a reader has the role ``researcher``, which revision 0004 cannot store.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_OLD_ROLES = "role IN ('reviewer', 'sme', 'admin')"
_NEW_ROLES = "role IN ('reviewer', 'sme', 'researcher', 'admin')"
# 0001 gave the role check a name that the naming convention prefixed once more; 0005 names it as the ORM does.
_OLD_CHECK, _NEW_CHECK = "ck_readers_ck_readers_role", "ck_readers_role"
_OLD_COLUMNS = ("id", "name", "role", "created_at")

_SQLITE_TRIGGERS = [
    """CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'audit events are immutable: the trail is append-only'); END""",
    """CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'audit events are immutable: they cannot be deleted'); END""",
]
_PG_TRIGGERS = [
    """CREATE FUNCTION audit_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'audit events are immutable: % refused on audit event %', TG_OP, OLD.id; END $$""",
    """CREATE TRIGGER audit_events_immutable BEFORE UPDATE OR DELETE ON audit_events
       FOR EACH ROW EXECUTE FUNCTION audit_events_immutable()""",
]


def _user_columns() -> list[sa.Column]:
    return [
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
    ]


def _rebuild_sqlite_readers(*, new: bool) -> None:
    """Re-create ``readers`` in the 0005 (``new``) or 0004 shape, keeping ids, names, roles and dates."""
    op.execute("PRAGMA defer_foreign_keys = ON")  # until the commit; SQLite resets it there
    columns = ", ".join(_OLD_COLUMNS)
    op.execute(f"CREATE TABLE _readers_copy AS SELECT {columns} FROM readers")
    op.execute("DROP TABLE readers")
    op.create_table(
        "readers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *(_user_columns() if new else []),
        sa.PrimaryKeyConstraint("id", name="pk_readers"),
        sa.UniqueConstraint("name", name="uq_readers_name"),
        sa.CheckConstraint(_NEW_ROLES if new else _OLD_ROLES, name=op.f(_NEW_CHECK if new else _OLD_CHECK)),
    )
    op.execute(f"INSERT INTO readers ({columns}) SELECT {columns} FROM _readers_copy ORDER BY id")
    op.execute("DROP TABLE _readers_copy")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _rebuild_sqlite_readers(new=True)
    else:
        for column in _user_columns():
            op.add_column("readers", column)
        op.drop_constraint(op.f(_OLD_CHECK), "readers", type_="check")
        op.create_check_constraint(op.f(_NEW_CHECK), "readers", _NEW_ROLES)
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("who", sa.String(200), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("film_sha", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    for column in ("at", "who", "action", "film_sha"):
        op.create_index(f"ix_audit_events_{column}", "audit_events", [column])
    triggers = {"sqlite": _SQLITE_TRIGGERS, "postgresql": _PG_TRIGGERS}.get(bind.dialect.name, [])
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    """Back to 0004; refused while any reader is a researcher (0004 cannot store that role)."""
    bind = op.get_bind()
    researchers = bind.execute(sa.text("SELECT count(*) FROM readers WHERE role = 'researcher'")).scalar()
    if researchers:
        raise RuntimeError(f"{researchers} reader(s) have the role researcher, which revision 0004 cannot store; "
                           "give them another role first (python -m cxr_core users set-role NAME ROLE)")
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_immutable ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_immutable()")
    op.drop_table("audit_events")  # its indexes and SQLite triggers go with it
    if bind.dialect.name == "sqlite":
        _rebuild_sqlite_readers(new=False)
    else:
        op.drop_constraint(op.f(_NEW_CHECK), "readers", type_="check")
        op.create_check_constraint(op.f(_OLD_CHECK), "readers", _OLD_ROLES)
        for column in ("locked_until", "failed_logins", "disabled", "password_hash"):
            op.drop_column("readers", column)
