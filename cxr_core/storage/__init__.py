"""Annotation database: engine, readers, images, sessions and queues (SQLAlchemy 2).

Functions take a :class:`~sqlalchemy.orm.Session` and never commit: the caller frames each
save as one transaction, ``with factory.begin() as s: submit_annotation(s, ...)``. Cache the
engine and the factory (``st.cache_resource``), never a Session.

``make_engine(url)`` creates the SQLite file and its folder on first use and upgrades the
schema to the newest Alembic revision. SQLite runs in WAL mode with ``synchronous=FULL`` and
foreign keys on. Frame reads with :func:`read_transaction` (``with read_transaction(factory) as s:``): a
plain deferred ``BEGIN`` on a snapshot, which never takes the write lock, so a long read blocks
no save. ``factory.begin()`` is for writes: it starts with ``BEGIN IMMEDIATE``, so a writer
queues for the lock before it reads anything and cannot fail halfway; it waits up to the
engine's bound (``busy_timeout_ms``) and then raises :class:`StorageBusyError`. Keep write
transactions short (one page action). A read-only, full or failing disk raises a plain
:class:`StorageUnavailableError` (:mod:`cxr_core.storage.errors`); the transaction is rolled
back and every committed save stays. PostgreSQL works with the same code (no SQLite hooks).

The engine and transaction framing are in :mod:`cxr_core.storage.engine`; annotations (exclusions
included), drafts and first-shown times (:func:`record_shown`) in :mod:`cxr_core.storage.annotation_store`,
the checks of an answer in :mod:`cxr_core.storage.checks`, model results in
:mod:`cxr_core.storage.model_results`; the tables in :mod:`cxr_core.storage.schema`. All are
re-exported here, so ``cxr_core.storage`` stays the one import path; readers, images, sessions and
queues live in this module. Reading-time figures are in :mod:`cxr_core.annotation.reading_times`.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxr_core.errors import CXRError
from cxr_core.storage.annotation_store import (  # noqa: F401  (re-exported)
    annotation_history,
    annotation_mask,
    delete_draft,
    get_draft,
    latest_annotation,
    latest_annotations,
    record_shown,
    revise_annotation,
    save_draft,
    submit_annotation,
)
from cxr_core.storage.checks import (  # noqa: F401  (re-exported)
    UNCERTAIN,
    AlreadySubmittedError,
    AnnotationError,
    ConcurrentEditError,
    NotAssignedError,
    StaleVersionError,
)
from cxr_core.storage.codec import decode_pixels, encode_pixels
from cxr_core.storage.engine import (  # noqa: F401  (re-exported)
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    init_db,
    make_engine,
    read_transaction,
    session_factory,
)
from cxr_core.storage.model_results import (  # noqa: F401  (re-exported)
    get_model_result,
    model_results_for_image,
    result_heatmap,
    save_model_result,
)
from cxr_core.storage.errors import (  # noqa: F401  (re-exported)
    StorageBusyError,
    StorageFullError,
    StorageReadOnlyError,
    StorageUnavailableError,
    WriteInReadTransactionError,
    busy_error,
    translate,
)
from cxr_core.storage.schema import (  # noqa: F401  (re-exported)
    EXCLUDED,
    EXCLUSION_REASONS,
    ROLES,
    Annotation,
    AnnotationSession,
    Base,
    Draft,
    Image,
    ImmutableAnnotationError,
    ModelResult,
    QueueItem,
    Reader,
    ReadingStart,
    Redaction,
    SessionImage,
    SessionReader,
)

class StorageError(CXRError):
    """A database request that cannot be met as asked (unknown name, bad value)."""


# --- readers ---------------------------------------------------------------------------------


def add_reader(s: Session, name: str, role: str = "sme") -> Reader:
    """Add a reader (a user without a password); ``role`` is one of :data:`cxr_core.auth.roles.ROLES`.

    Names are unique. :func:`cxr_core.auth.create_user` adds one with a password.
    """
    name = (name or "").strip()
    if not name:
        raise StorageError("reader name is empty; expected a non-empty name")
    if role not in ROLES:
        raise StorageError(f"role {role!r}; expected one of {', '.join(ROLES)}")
    if s.scalar(select(Reader.id).where(Reader.name == name)) is not None:
        raise StorageError(f"a reader named {name!r} already exists; names are unique")
    reader = Reader(name=name, role=role)
    s.add(reader)
    s.flush()
    return reader


def get_reader(s: Session, name: str) -> Reader | None:
    """The reader with this name, or ``None``."""
    return s.scalar(select(Reader).where(Reader.name == name))


def list_readers(s: Session, role: str | None = None) -> list[Reader]:
    """Readers by name, optionally of one role."""
    query = select(Reader).order_by(Reader.name)
    if role is not None:
        query = query.where(Reader.role == role)
    return list(s.scalars(query))


# --- images ----------------------------------------------------------------------------------


def add_image(
    s: Session,
    pixels: np.ndarray,
    *,
    sha256: str | None = None,
    bit_depth: int = 16,
    reference_label: str | None = None,
    original_name: str | None = None,
) -> Image:
    """Store de-identified pixels under their SHA-256; an image already stored is returned as is.

    Parameters
    ----------
    pixels : (H, W) ndarray
        float in [0, 1] (``XRay.pixels``), uint8 or uint16.
    sha256 : str or None
        The image's identity; default :func:`cxr_core.io.imaging.pixel_sha256` of the pixels as
        float32 in [0, 1] (what ``load_xray`` computes).
    bit_depth : {8, 16}
        PNG depth for float pixels: 8 for 8-bit sources, 16 otherwise.
    original_name : str or None
        The film's name in exports; pass a pseudonymous label (:func:`add_xray` passes
        :func:`cxr_core.io.film_facts.film_label`), never an upload's file name.
    """
    arr = np.asarray(pixels)
    if sha256 is None:
        from cxr_core.io.imaging import pixel_sha256

        unit = arr / np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else arr
        sha256 = pixel_sha256(unit)
    if len(sha256) != 64 or any(ch not in "0123456789abcdef" for ch in sha256):
        raise StorageError(f"sha256 {sha256!r:.80}; expected 64 lower-case hex digits")
    existing = s.get(Image, sha256)
    if existing is not None:
        return existing
    png = encode_pixels(arr, bit_depth=bit_depth)
    depth = 8 if arr.dtype == np.uint8 or (arr.dtype != np.uint16 and bit_depth == 8) else 16
    image = Image(
        sha256=sha256, png=png, height=int(arr.shape[0]), width=int(arr.shape[1]), bit_depth=depth,
        reference_label=reference_label, original_name=original_name,
    )
    s.add(image)
    s.flush()
    return image


def add_xray(s: Session, xray: Any, *, reference_label: str | None = None) -> Image:
    """Store an :class:`~cxr_core.io.imaging.XRay` (its pixels, hash and bit depth) under its film label.

    ``images.original_name`` gets :func:`cxr_core.io.film_facts.film_label` (``film-`` and 8 hex digits of
    the pixel hash), never the upload's file name: file names often carry a patient's name or record number.
    """
    from cxr_core.io.film_facts import film_label

    return add_image(
        s, xray.pixels, sha256=xray.sha256, bit_depth=8 if xray.bit_depth <= 8 else 16,
        reference_label=reference_label, original_name=film_label(xray.sha256),
    )


def get_image(s: Session, sha256: str) -> Image | None:
    """The stored image with this pixel hash, or ``None``."""
    return s.get(Image, sha256)


def image_pixels(image: Image) -> np.ndarray:
    """The stored pixels as (H, W) float32 in [0, 1] (the PNG is loaded on first access, so
    call this while the image's Session is open, or use :func:`load_pixels`)."""
    return decode_pixels(image.png)


def load_pixels(s: Session, sha256: str) -> np.ndarray:
    """The stored pixels of the image with this hash, (H, W) float32 in [0, 1]."""
    png = s.scalar(select(Image.png).where(Image.sha256 == sha256))
    if png is None:
        raise StorageError(f"image {sha256[:12]}... is not stored")
    return decode_pixels(png)


# --- sessions and queues ---------------------------------------------------------------------


@dataclass(frozen=True)
class QueueEntry:
    """One image in a reader's queue: its place, and how far the reader got with it."""

    position: int
    image_sha: str
    version: int | None  # latest submitted version, None while pending
    has_draft: bool
    excluded: bool = False  # the latest version excludes the film ("not a chest film", "not readable")

    @property
    def done(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class ReaderQueue:
    """A reader's images in a session, in that reader's order, with progress."""

    session_id: int
    reader_id: int
    entries: tuple[QueueEntry, ...]

    @property
    def total(self) -> int:
        return len(self.entries)

    @property
    def done(self) -> int:
        return sum(e.done for e in self.entries)

    @property
    def progress(self) -> float:
        """Fraction done, 0..1 (1 for an empty queue)."""
        return self.done / self.total if self.total else 1.0

    @property
    def progress_text(self) -> str:
        return f"{self.done} of {self.total} done"

    @property
    def next_pending(self) -> QueueEntry | None:
        """The first image in order not yet submitted, or ``None`` when finished."""
        return next((e for e in self.entries if not e.done), None)


def create_session(
    s: Session,
    *,
    name: str,
    image_shas: Sequence[str],
    reader_ids: Sequence[int],
    blind: bool = True,
    created_by: int | None = None,
    seed: int | None = None,
    shuffle: bool = True,
) -> AnnotationSession:
    """Create an annotation session and give each reader the images in their own order.

    Parameters
    ----------
    image_shas : sequence of str
        Images already stored with :func:`add_image`; duplicates are dropped.
    reader_ids : sequence of int
        Readers to assign now (more later with :func:`assign_reader`).
    seed : int or None
        Seed of the per-reader shuffles (random if ``None``); stored, so orders can be
        reproduced: reader ``r`` gets ``random.Random(f"{seed}:{r}").shuffle(images)``.
    shuffle : bool
        ``False`` keeps ``image_shas`` order for everyone.
    """
    name = (name or "").strip()
    if not name:
        raise StorageError("session name is empty; expected a non-empty name")
    if s.scalar(select(AnnotationSession.id).where(AnnotationSession.name == name)) is not None:
        raise StorageError(f"a session named {name!r} already exists; names are unique")
    shas = list(dict.fromkeys(image_shas))
    if not shas:
        raise StorageError("no images given; a session needs at least one image")
    stored = set(s.scalars(select(Image.sha256).where(Image.sha256.in_(shas))))
    missing = [sha for sha in shas if sha not in stored]
    if missing:
        raise StorageError(
            f"{len(missing)} image(s) not stored, e.g. {missing[0][:12]}...; add them with add_image() first"
        )
    if created_by is not None and s.get(Reader, created_by) is None:
        raise StorageError(f"created_by={created_by} is no reader id")
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    session = AnnotationSession(name=name, blind=bool(blind), seed=seed, created_by=created_by)
    s.add(session)
    s.flush()
    s.add_all(SessionImage(session_id=session.id, image_sha=sha, position=i) for i, sha in enumerate(shas))
    s.flush()
    for reader_id in dict.fromkeys(reader_ids):
        assign_reader(s, session.id, reader_id, shuffle=shuffle)
    return session


def assign_reader(s: Session, session_id: int, reader_id: int, *, shuffle: bool = True) -> None:
    """Give a reader the session's images, shuffled with the session's seed and their id."""
    session = s.get(AnnotationSession, session_id)
    if session is None:
        raise StorageError(f"session id {session_id} does not exist")
    if s.get(Reader, reader_id) is None:
        raise StorageError(f"reader id {reader_id} does not exist")
    if s.get(SessionReader, (session_id, reader_id)) is not None:
        raise StorageError(f"reader {reader_id} is already assigned to session {session.name!r}")
    shas = list(s.scalars(
        select(SessionImage.image_sha).where(SessionImage.session_id == session_id).order_by(SessionImage.position)
    ))
    if shuffle:
        random.Random(f"{session.seed}:{reader_id}").shuffle(shas)
    s.add(SessionReader(session_id=session_id, reader_id=reader_id))
    s.flush()
    s.add_all(
        QueueItem(session_id=session_id, reader_id=reader_id, position=i, image_sha=sha) for i, sha in enumerate(shas)
    )
    s.flush()


def get_session(s: Session, name: str) -> AnnotationSession | None:
    """The session with this name, or ``None``."""
    return s.scalar(select(AnnotationSession).where(AnnotationSession.name == name))


def list_sessions(s: Session, reader_id: int | None = None) -> list[AnnotationSession]:
    """Sessions by creation, or only those a reader is assigned to."""
    query = select(AnnotationSession).order_by(AnnotationSession.created_at, AnnotationSession.id)
    if reader_id is not None:
        query = query.join(SessionReader, SessionReader.session_id == AnnotationSession.id).where(
            SessionReader.reader_id == reader_id
        )
    return list(s.scalars(query))


def session_readers(s: Session, session_id: int) -> list[Reader]:
    """Readers assigned to a session, by name."""
    query = (
        select(Reader).join(SessionReader, SessionReader.reader_id == Reader.id)
        .where(SessionReader.session_id == session_id).order_by(Reader.name)
    )
    return list(s.scalars(query))


def reader_queue(s: Session, session_id: int, reader_id: int) -> ReaderQueue:
    """A reader's images in their order, each with its latest submitted version, draft and exclusion flags."""
    if s.get(SessionReader, (session_id, reader_id)) is None:
        raise StorageError(f"reader {reader_id} is not assigned to session {session_id}")
    mine = (Annotation.session_id == session_id, Annotation.reader_id == reader_id)
    newest = (
        select(Annotation.image_sha, func.max(Annotation.version).label("version"))
        .where(*mine).group_by(Annotation.image_sha).subquery()
    )
    latest = (
        select(Annotation.image_sha, Annotation.version, Annotation.exclusion)
        .join(newest, (newest.c.image_sha == Annotation.image_sha) & (newest.c.version == Annotation.version))
        .where(*mine).subquery()
    )
    drafts = (
        select(Draft.image_sha).where(Draft.session_id == session_id, Draft.reader_id == reader_id).subquery()
    )
    rows = s.execute(
        select(QueueItem.position, QueueItem.image_sha, latest.c.version, drafts.c.image_sha, latest.c.exclusion)
        .outerjoin(latest, latest.c.image_sha == QueueItem.image_sha)
        .outerjoin(drafts, drafts.c.image_sha == QueueItem.image_sha)
        .where(QueueItem.session_id == session_id, QueueItem.reader_id == reader_id)
        .order_by(QueueItem.position)
    )
    entries = tuple(
        QueueEntry(pos, sha, version, draft is not None, exclusion is not None)
        for pos, sha, version, draft, exclusion in rows
    )
    return ReaderQueue(session_id, reader_id, entries)
