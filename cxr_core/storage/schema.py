"""ORM models of the annotation database (SQLAlchemy 2 typed declarative).

The schema itself is created and changed only by the Alembic migrations in
``cxr_core/storage/migrations``; these classes must match them (``tests/test_migrations.py`` checks).
Images are identified by the SHA-256 of their decoded pixels; a submitted annotation is
immutable (an ORM guard here and a database trigger from migration 0001, re-created by 0003), and so
is an audit event (guard here, triggers from migration 0005). Readers are the users who log in.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    MetaData,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from cxr_core.auth.roles import ROLES
from cxr_core.errors import CXRError

_ROLES_SQL = ", ".join(f"'{r}'" for r in ROLES)
#: The diagnosis stored when a reader excludes a film instead of reading it.
EXCLUDED = "excluded"
#: Why a reader may exclude a film (stored in ``annotations.exclusion`` and ``drafts.exclusion``).
EXCLUSION_REASONS = ("not a chest film", "not readable")
_REASONS_SQL = ", ".join(f"'{r}'" for r in EXCLUSION_REASONS)


class ImmutableAnnotationError(CXRError):
    """Something tried to change or delete a submitted annotation."""


class ImmutableAuditEventError(CXRError):
    """Something tried to change or delete an entry of the audit trail."""


def utcnow() -> datetime:
    """Current time, timezone-aware UTC (a callable default, evaluated per row)."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """``DateTime(timezone=True)`` that always hands back aware UTC, SQLite included."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


#: Constraint and index names, so later migrations (SQLite batch mode included) can name them.
NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON, bytes: LargeBinary}


class Reader(Base):
    """A user: a reviewer, a subject-matter expert (reads films), a researcher or an administrator.

    ``password_hash`` is argon2id (:mod:`cxr_core.auth.passwords`), ``None`` until one is set (such
    an account cannot log in locally); ``failed_logins`` counts failures since the last success and
    ``locked_until`` ends a lockout (see :func:`cxr_core.auth.authenticate`).
    """

    __tablename__ = "readers"
    __table_args__ = (CheckConstraint(f"role IN ({_ROLES_SQL})", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None]


class Image(Base):
    """A de-identified radiograph: pixels as a grayscale PNG (8 or 16 bit), keyed by pixel hash."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    png: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # loaded only when read
    height: Mapped[int]
    width: Mapped[int]
    bit_depth: Mapped[int]
    reference_label: Mapped[str | None] = mapped_column(String(64))
    original_name: Mapped[str | None] = mapped_column(String(500))  # the film label film-<8 hex>, never a file name
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Redaction(Base):
    """A film stored with its burned-in text blacked out: the pixel hash of the film as it came (migration 0006).

    The stored film is identified by the hash of its redacted pixels (``image_sha``); the blind gate also
    matches ``source_sha``, so the unredacted original is recognised as the same film.
    """

    __tablename__ = "redactions"

    image_sha: Mapped[str] = mapped_column(String(64), ForeignKey("images.sha256"), primary_key=True)
    source_sha: Mapped[str] = mapped_column(String(64), index=True)


class AnnotationSession(Base):
    """A named set of images read by assigned readers, each in their own shuffled order."""

    __tablename__ = "annotation_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    blind: Mapped[bool] = mapped_column(Boolean)
    seed: Mapped[int]
    created_by: Mapped[int | None] = mapped_column(ForeignKey("readers.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SessionImage(Base):
    """An image in a session."""

    __tablename__ = "session_images"

    session_id: Mapped[int] = mapped_column(ForeignKey("annotation_sessions.id", ondelete="CASCADE"), primary_key=True)
    image_sha: Mapped[str] = mapped_column(ForeignKey("images.sha256"), primary_key=True)
    position: Mapped[int]


class SessionReader(Base):
    """A reader assigned to a session."""

    __tablename__ = "session_readers"

    session_id: Mapped[int] = mapped_column(ForeignKey("annotation_sessions.id", ondelete="CASCADE"), primary_key=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id"), primary_key=True)


class QueueItem(Base):
    """One image in one reader's order within a session."""

    __tablename__ = "queue_items"
    __table_args__ = (
        UniqueConstraint("session_id", "reader_id", "image_sha", name="uq_queue_items_image"),
        ForeignKeyConstraint(
            ["session_id", "reader_id"], ["session_readers.session_id", "session_readers.reader_id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["session_id", "image_sha"], ["session_images.session_id", "session_images.image_sha"], ondelete="CASCADE"
        ),
    )

    session_id: Mapped[int] = mapped_column(primary_key=True)
    reader_id: Mapped[int] = mapped_column(primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    image_sha: Mapped[str] = mapped_column(String(64))


class Annotation(Base):
    """A submitted reading of one image by one reader in one session; never changed once written.

    A revision is a new row with ``version + 1`` and ``supersedes_id`` pointing at the row it
    replaces; the old row stays. An exclusion ("not a chest film", "not readable") is stored as
    diagnosis :data:`EXCLUDED` with the reason in ``exclusion`` and an optional confidence.
    ``shown_at`` is when the film was first shown for this version (see ``ReadingStart``),
    ``created_at`` when it was submitted.
    """

    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("reader_id", "image_sha", "session_id", "version", name="uq_annotations_version"),
        ForeignKeyConstraint(  # only an image in that reader's queue for that session
            ["session_id", "reader_id", "image_sha"],
            ["queue_items.session_id", "queue_items.reader_id", "queue_items.image_sha"],
        ),
        CheckConstraint("version >= 1", name="version"),
        CheckConstraint("confidence BETWEEN 1 AND 5", name="confidence"),
        CheckConstraint(f"exclusion IS NULL OR exclusion IN ({_REASONS_SQL})", name="exclusion"),
        CheckConstraint(  # a diagnosis with a confidence, or an exclusion stored as EXCLUDED
            f"(exclusion IS NULL AND diagnosis <> '{EXCLUDED}' AND confidence IS NOT NULL)"
            f" OR (exclusion IS NOT NULL AND diagnosis = '{EXCLUDED}')",
            name="answer",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_id: Mapped[int] = mapped_column(index=True)
    image_sha: Mapped[str] = mapped_column(String(64), index=True)
    session_id: Mapped[int] = mapped_column(index=True)
    version: Mapped[int]
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))
    diagnosis: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[int | None]
    exclusion: Mapped[str | None] = mapped_column(String(32))
    regions: Mapped[list[Any]]
    canvas_json: Mapped[dict[str, Any]]
    canvas_width: Mapped[int]
    canvas_height: Mapped[int]
    background_fit: Mapped[dict[str, Any] | None]
    mask_png: Mapped[bytes] = mapped_column(LargeBinary)
    mask_area: Mapped[int]
    app_version: Mapped[str] = mapped_column(String(64))
    canvas_version: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)
    shown_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


@event.listens_for(Annotation, "before_update")
def _refuse_update(mapper: Any, connection: Any, target: Annotation) -> None:
    raise ImmutableAnnotationError(
        f"annotation {target.id} (version {target.version}) is submitted and cannot change; "
        "use revise_annotation() to add a new version"
    )


@event.listens_for(Annotation, "before_delete")
def _refuse_delete(mapper: Any, connection: Any, target: Annotation) -> None:
    raise ImmutableAnnotationError(f"annotation {target.id} is submitted and cannot be deleted")


class Draft(Base):
    """An unsubmitted drawing, one per (reader, image, session), replaced on each save."""

    __tablename__ = "drafts"
    __table_args__ = (
        UniqueConstraint("reader_id", "image_sha", "session_id", name="uq_drafts_item"),
        ForeignKeyConstraint(
            ["session_id", "reader_id", "image_sha"],
            ["queue_items.session_id", "queue_items.reader_id", "queue_items.image_sha"],
            ondelete="CASCADE",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_id: Mapped[int]
    image_sha: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[int]
    canvas_json: Mapped[dict[str, Any]]
    canvas_width: Mapped[int]
    canvas_height: Mapped[int]
    background_fit: Mapped[dict[str, Any] | None]
    labels: Mapped[list[Any]]
    diagnosis: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[int | None]
    exclusion: Mapped[str | None] = mapped_column(String(32))
    comment: Mapped[str | None] = mapped_column(Text)  # the reader's free comment, kept across reloads
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ReadingStart(Base):
    """When a film was first shown to a reader for the version they were about to make.

    One row per (session, reader, image, version), written once and never moved, so the time a
    reading took is ``annotations.created_at - shown_at`` for every version, revisions included.
    """

    __tablename__ = "reading_starts"
    __table_args__ = (
        UniqueConstraint("session_id", "reader_id", "image_sha", "version", name="uq_reading_starts_version"),
        ForeignKeyConstraint(
            ["session_id", "reader_id", "image_sha"],
            ["queue_items.session_id", "queue_items.reader_id", "queue_items.image_sha"],
            ondelete="CASCADE",
        ),
        CheckConstraint("version >= 1", name="version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int]
    reader_id: Mapped[int]
    image_sha: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    shown_at: Mapped[datetime]


class ModelResult(Base):
    """A model's output for an image: probabilities and a compressed heatmap."""

    __tablename__ = "model_results"
    __table_args__ = (
        UniqueConstraint("image_sha", "model_name", "model_checksum", "method", "target", name="uq_model_results_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_sha: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    model_name: Mapped[str] = mapped_column(String(100))
    model_checksum: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(64))
    probabilities: Mapped[dict[str, Any]]
    heatmap_npz: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """One entry of the audit trail: who did what, when, to which film; never changed once written.

    ``who`` is the user's name (``None`` for the operator or the system), ``action`` one of
    :data:`cxr_core.auth.trail.AUDIT_ACTIONS`, ``film_sha`` the pixel hash of the film concerned.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    who: Mapped[str | None] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    film_sha: Mapped[str | None] = mapped_column(String(64), index=True)
    detail: Mapped[str] = mapped_column(Text, default="")


@event.listens_for(AuditEvent, "before_update")
def _refuse_event_update(mapper: Any, connection: Any, target: AuditEvent) -> None:
    raise ImmutableAuditEventError(f"audit event {target.id} is part of the trail and cannot change")


@event.listens_for(AuditEvent, "before_delete")
def _refuse_event_delete(mapper: Any, connection: Any, target: AuditEvent) -> None:
    raise ImmutableAuditEventError(f"audit event {target.id} is part of the trail and cannot be deleted")
