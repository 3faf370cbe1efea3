"""Exclusions ("not a chest film", "not readable") and server-side reading times.

- ``annotations.exclusion`` and ``drafts.exclusion``: the reason a reader excluded a film; an
  excluded reading stores diagnosis ``'excluded'`` and may have no confidence, so
  ``annotations.confidence`` becomes nullable (still 1..5 when given).
- ``annotations.shown_at``: when the film was first shown for that version.
- ``reading_starts``: that first-shown time per (session, reader, image, version), written once.

Existing rows keep every value; the new columns are NULL on them.

SQLite cannot drop NOT NULL in place, so ``annotations`` is rebuilt by hand rather than by
Alembic's batch mode: batch copies into a new table that references ``annotations`` and then
drops the old one, and with foreign keys on (they are, and cannot be switched off inside the
migration's transaction) dropping the old table fails once any revision points at version 1.
Here the old table is renamed first (SQLite rewrites its self-reference to the new name), the
new one is created and filled, the old one dropped; indexes and the immutability triggers,
which go with the old table, are created again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_REASONS = "'not a chest film', 'not readable'"
_EXCLUSION_CHECK = f"exclusion IS NULL OR exclusion IN ({_REASONS})"
_ANSWER_CHECK = (
    "(exclusion IS NULL AND diagnosis <> 'excluded' AND confidence IS NOT NULL)"
    " OR (exclusion IS NOT NULL AND diagnosis = 'excluded')"
)
_OLD_COLUMNS = (
    "id", "reader_id", "image_sha", "session_id", "version", "supersedes_id", "diagnosis", "confidence", "regions",
    "canvas_json", "canvas_width", "canvas_height", "background_fit", "mask_png", "mask_area", "app_version",
    "canvas_version", "comment", "created_at",
)
_SQLITE_TRIGGERS = [  # as in 0001
    """CREATE TRIGGER annotations_no_update BEFORE UPDATE ON annotations
       BEGIN SELECT RAISE(ABORT, 'annotations are immutable: insert a new version instead'); END""",
    """CREATE TRIGGER annotations_no_delete BEFORE DELETE ON annotations
       BEGIN SELECT RAISE(ABORT, 'annotations are immutable: they cannot be deleted'); END""",
]


def _annotations_table(*, new: bool) -> None:
    """Create ``annotations`` as of 0003 (``new``) or as of 0001/0002."""
    extra = [
        sa.Column("exclusion", sa.String(32), nullable=True),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_EXCLUSION_CHECK, name=op.f("ck_annotations_exclusion")),
        sa.CheckConstraint(_ANSWER_CHECK, name=op.f("ck_annotations_answer")),
    ] if new else []
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column("image_sha", sa.String(64), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.Column("diagnosis", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Integer(), nullable=new),
        sa.Column("regions", sa.JSON(), nullable=False),
        sa.Column("canvas_json", sa.JSON(), nullable=False),
        sa.Column("canvas_width", sa.Integer(), nullable=False),
        sa.Column("canvas_height", sa.Integer(), nullable=False),
        sa.Column("background_fit", sa.JSON(), nullable=True),
        sa.Column("mask_png", sa.LargeBinary(), nullable=False),
        sa.Column("mask_area", sa.Integer(), nullable=False),
        sa.Column("app_version", sa.String(64), nullable=False),
        sa.Column("canvas_version", sa.String(64), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_annotations"),
        sa.UniqueConstraint("reader_id", "image_sha", "session_id", "version", name="uq_annotations_version"),
        sa.ForeignKeyConstraint(
            ["session_id", "reader_id", "image_sha"],
            ["queue_items.session_id", "queue_items.reader_id", "queue_items.image_sha"],
            name="fk_annotations_session_id_queue_items",
        ),
        sa.ForeignKeyConstraint(["supersedes_id"], ["annotations.id"], name="fk_annotations_supersedes_id_annotations"),
        # named as 0001 named them (the naming convention prefixes these once more)
        sa.CheckConstraint("version >= 1", name="ck_annotations_version"),
        sa.CheckConstraint("confidence BETWEEN 1 AND 5", name="ck_annotations_confidence"),
        *extra,
    )


def _rebuild_sqlite_annotations(*, new: bool) -> None:
    """Rebuild ``annotations`` in the 0003 (``new``) or 0002 shape, copying the 0002 columns."""
    op.execute("ALTER TABLE annotations RENAME TO _annotations_old")
    for statement in ("DROP TRIGGER annotations_no_update", "DROP TRIGGER annotations_no_delete"):
        op.execute(statement)
    for column in ("reader_id", "image_sha", "session_id"):
        op.drop_index(f"ix_annotations_{column}", table_name="_annotations_old")
    _annotations_table(new=new)
    columns = ", ".join(_OLD_COLUMNS)
    op.execute(f"INSERT INTO annotations ({columns}) SELECT {columns} FROM _annotations_old ORDER BY id")
    op.execute("DROP TABLE _annotations_old")
    for column in ("reader_id", "image_sha", "session_id"):
        op.create_index(f"ix_annotations_{column}", "annotations", [column])
    for statement in _SQLITE_TRIGGERS:
        op.execute(statement)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_annotations(new=True)
        op.add_column("drafts", sa.Column("exclusion", sa.String(32), nullable=True))
    else:
        op.add_column("annotations", sa.Column("exclusion", sa.String(32), nullable=True))
        op.add_column("annotations", sa.Column("shown_at", sa.DateTime(timezone=True), nullable=True))
        op.alter_column("annotations", "confidence", existing_type=sa.Integer(), nullable=True)
        op.create_check_constraint(op.f("ck_annotations_exclusion"), "annotations", _EXCLUSION_CHECK)
        op.create_check_constraint(op.f("ck_annotations_answer"), "annotations", _ANSWER_CHECK)
        op.add_column("drafts", sa.Column("exclusion", sa.String(32), nullable=True))
    op.create_table(
        "reading_starts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column("image_sha", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reading_starts"),
        sa.UniqueConstraint("session_id", "reader_id", "image_sha", "version", name="uq_reading_starts_version"),
        sa.ForeignKeyConstraint(
            ["session_id", "reader_id", "image_sha"],
            ["queue_items.session_id", "queue_items.reader_id", "queue_items.image_sha"],
            ondelete="CASCADE", name="fk_reading_starts_session_id_queue_items",
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_reading_starts_version")),
    )


def downgrade() -> None:
    """Back to 0002; refused while any reading is an exclusion (0002 cannot store one)."""
    bind = op.get_bind()
    excluded = bind.execute(sa.text("SELECT count(*) FROM annotations WHERE exclusion IS NOT NULL")).scalar()
    if excluded:
        raise RuntimeError(f"{excluded} annotation(s) are exclusions, which revision 0002 cannot store; "
                           "downgrading would lose them")
    op.drop_table("reading_starts")
    if bind.dialect.name == "sqlite":
        _rebuild_sqlite_annotations(new=False)
        with op.batch_alter_table("drafts") as batch:
            batch.drop_column("exclusion")
    else:
        op.drop_constraint(op.f("ck_annotations_answer"), "annotations", type_="check")
        op.drop_constraint(op.f("ck_annotations_exclusion"), "annotations", type_="check")
        op.alter_column("annotations", "confidence", existing_type=sa.Integer(), nullable=False)
        op.drop_column("annotations", "shown_at")
        op.drop_column("annotations", "exclusion")
        op.drop_column("drafts", "exclusion")
