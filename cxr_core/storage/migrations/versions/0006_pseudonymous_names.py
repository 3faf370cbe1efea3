"""Film names stored before pseudonymisation become film labels; a redacted film keeps its source's hash (issue 15).

``images.original_name`` held the upload's file name, which in practice carries patient names and record
numbers (``DOE_JANE_4711_19700101.dcm``) and reached every export. From this revision it holds the film
label ``film-`` + the first 8 hex digits of the pixel SHA-256 (:func:`cxr_core.io.film_facts.film_label`),
the same label new uploads get from :func:`cxr_core.storage.add_xray`. ``images`` is the only table that
holds a file name (the others name films by ``image_sha``).

On SQLite ``secure_delete`` is switched on first, so the old names are zeroed in the database file and do
not linger in free pages.

``redactions`` (new table): for a film stored with its burned-in text blacked out
(:mod:`cxr_core.safety.redaction`), ``source_sha``, the pixel SHA-256 of the film as it came. The stored
film is identified by the hash of its redacted pixels; the blind gate also matches the source's hash, so
loading the unredacted original while the redacted film is pending is recognised as that film.

Downgrade drops ``redactions`` and leaves the labels: the names are gone by design, and the labels are
valid names for 0005.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: The label :func:`cxr_core.io.film_facts.film_label` gives, in SQL (written out: a migration never changes).
_LABEL = "'film-' || substr(sha256, 1, 8)"


def upgrade() -> None:
    op.create_table(
        "redactions",
        sa.Column("image_sha", sa.String(64), nullable=False),
        sa.Column("source_sha", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("image_sha", name="pk_redactions"),
        sa.ForeignKeyConstraint(["image_sha"], ["images.sha256"], name="fk_redactions_image_sha_images"),
    )
    op.create_index("ix_redactions_source_sha", "redactions", ["source_sha"])
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        bind.exec_driver_sql("PRAGMA secure_delete = ON")
    op.execute(sa.text(f"UPDATE images SET original_name = {_LABEL} "
                       f"WHERE original_name IS NOT NULL AND original_name <> {_LABEL}"))


def downgrade() -> None:
    """Drop ``redactions``; the file names are not kept anywhere, on purpose, so the labels stay."""
    op.drop_index("ix_redactions_source_sha", table_name="redactions")
    op.drop_table("redactions")
