"""Drafts (unsubmitted drawings) and model results (probabilities, compressed heatmaps).

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drafts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column("image_sha", sa.String(64), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("canvas_json", sa.JSON(), nullable=False),
        sa.Column("canvas_width", sa.Integer(), nullable=False),
        sa.Column("canvas_height", sa.Integer(), nullable=False),
        sa.Column("background_fit", sa.JSON(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("diagnosis", sa.String(64), nullable=True),
        sa.Column("confidence", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_drafts"),
        sa.UniqueConstraint("reader_id", "image_sha", "session_id", name="uq_drafts_item"),
        sa.ForeignKeyConstraint(
            ["session_id", "reader_id", "image_sha"],
            ["queue_items.session_id", "queue_items.reader_id", "queue_items.image_sha"],
            ondelete="CASCADE", name="fk_drafts_session_id_queue_items",
        ),
    )
    op.create_table(
        "model_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_sha", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(100), nullable=False),
        sa.Column("model_checksum", sa.String(64), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("heatmap_npz", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_results"),
        sa.UniqueConstraint(
            "image_sha", "model_name", "model_checksum", "method", "target", name="uq_model_results_key"
        ),
        sa.ForeignKeyConstraint(["image_sha"], ["images.sha256"], name="fk_model_results_image_sha_images"),
    )
    op.create_index("ix_model_results_image_sha", "model_results", ["image_sha"])


def downgrade() -> None:
    op.drop_table("model_results")
    op.drop_table("drafts")
