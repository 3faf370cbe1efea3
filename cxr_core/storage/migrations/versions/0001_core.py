"""Core tables: readers, images, annotation sessions with per-reader queues, annotations.

Annotations are append-only: a trigger refuses UPDATE and DELETE on them, whatever client
writes to the database (the ORM refuses too, earlier and with a clearer message).

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = [
    """CREATE TRIGGER annotations_no_update BEFORE UPDATE ON annotations
       BEGIN SELECT RAISE(ABORT, 'annotations are immutable: insert a new version instead'); END""",
    """CREATE TRIGGER annotations_no_delete BEFORE DELETE ON annotations
       BEGIN SELECT RAISE(ABORT, 'annotations are immutable: they cannot be deleted'); END""",
]
_PG_TRIGGERS = [
    """CREATE FUNCTION annotations_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'annotations are immutable: % refused on annotation %', TG_OP, OLD.id; END $$""",
    """CREATE TRIGGER annotations_immutable BEFORE UPDATE OR DELETE ON annotations
       FOR EACH ROW EXECUTE FUNCTION annotations_immutable()""",
]


def upgrade() -> None:
    op.create_table(
        "readers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_readers"),
        sa.UniqueConstraint("name", name="uq_readers_name"),
        sa.CheckConstraint("role IN ('reviewer', 'sme', 'admin')", name="ck_readers_role"),
    )
    op.create_table(
        "images",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("png", sa.LargeBinary(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("bit_depth", sa.Integer(), nullable=False),
        sa.Column("reference_label", sa.String(64), nullable=True),
        sa.Column("original_name", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_images"),
    )
    op.create_table(
        "annotation_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("blind", sa.Boolean(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_annotation_sessions"),
        sa.UniqueConstraint("name", name="uq_annotation_sessions_name"),
        sa.ForeignKeyConstraint(["created_by"], ["readers.id"], name="fk_annotation_sessions_created_by_readers"),
    )
    op.create_table(
        "session_images",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("image_sha", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "image_sha", name="pk_session_images"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["annotation_sessions.id"], ondelete="CASCADE",
            name="fk_session_images_session_id_annotation_sessions",
        ),
        sa.ForeignKeyConstraint(["image_sha"], ["images.sha256"], name="fk_session_images_image_sha_images"),
    )
    op.create_table(
        "session_readers",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "reader_id", name="pk_session_readers"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["annotation_sessions.id"], ondelete="CASCADE",
            name="fk_session_readers_session_id_annotation_sessions",
        ),
        sa.ForeignKeyConstraint(["reader_id"], ["readers.id"], name="fk_session_readers_reader_id_readers"),
    )
    op.create_table(
        "queue_items",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("image_sha", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "reader_id", "position", name="pk_queue_items"),
        sa.UniqueConstraint("session_id", "reader_id", "image_sha", name="uq_queue_items_image"),
        sa.ForeignKeyConstraint(
            ["session_id", "reader_id"], ["session_readers.session_id", "session_readers.reader_id"],
            ondelete="CASCADE", name="fk_queue_items_session_id_session_readers",
        ),
        sa.ForeignKeyConstraint(
            ["session_id", "image_sha"], ["session_images.session_id", "session_images.image_sha"],
            ondelete="CASCADE", name="fk_queue_items_session_id_session_images",
        ),
    )
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column("image_sha", sa.String(64), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.Column("diagnosis", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Integer(), nullable=False),
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
        sa.CheckConstraint("version >= 1", name="ck_annotations_version"),
        sa.CheckConstraint("confidence BETWEEN 1 AND 5", name="ck_annotations_confidence"),
    )
    for column in ("reader_id", "image_sha", "session_id"):
        op.create_index(f"ix_annotations_{column}", "annotations", [column])
    triggers = {"sqlite": _SQLITE_TRIGGERS, "postgresql": _PG_TRIGGERS}.get(op.get_bind().dialect.name, [])
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS annotations_immutable ON annotations")
        op.execute("DROP FUNCTION IF EXISTS annotations_immutable()")
    tables = (
        "annotations", "queue_items", "session_readers", "session_images", "annotation_sessions", "images", "readers"
    )
    for table in tables:
        op.drop_table(table)
