"""Annotations (immutable, versioned), first-shown times and drafts.

A submission rasterises the canvas JSON at the image's stored resolution
(:func:`cxr_core.annotation.masks.region_masks`), writes version 1 and deletes the reader's draft, in the
caller's transaction. A revision writes version n+1 pointing at version n; rows are never
updated or deleted. Use through :mod:`cxr_core.storage`, which re-exports these names. The checks
of an answer are in :mod:`cxr_core.storage.checks`, model results in :mod:`cxr_core.storage.model_results`.

A reader may answer "exclude" instead of a diagnosis (``exclusion=`` one of
:data:`EXCLUSION_REASONS`); the reading is then stored with diagnosis :data:`EXCLUDED`.
:func:`record_shown` notes, once per version, when the film was first shown to the reader; a
submission or revision copies that time into ``Annotation.shown_at``.

About 420 lines by choice: submit, revise, draft and first-shown share the queue check and the reading's key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import and_, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cxr_core import __version__ as APP_VERSION
from cxr_core.annotation.masks import region_masks
from cxr_core.storage import checks
from cxr_core.storage.checks import (
    AlreadySubmittedError,
    AnnotationError,
    NotAssignedError,
    StaleVersionError,
    canvas_dict,
    check_answer,
    check_canvas_size,
    check_exclusion,
    flush_or_conflict,
    is_excluded,
)
from cxr_core.storage.codec import decode_mask, encode_mask
from cxr_core.storage.schema import (
    EXCLUDED,
    EXCLUSION_REASONS,
    Annotation,
    Draft,
    Image,
    QueueItem,
    ReadingStart,
    utcnow,
)
from cxr_core.models.zoo import DEFAULT_CLASSES



def _queue_item(s: Session, session_id: int, reader_id: int, image_sha: str) -> None:
    found = s.scalar(
        select(QueueItem.position).where(
            QueueItem.session_id == session_id, QueueItem.reader_id == reader_id, QueueItem.image_sha == image_sha
        )
    )
    if found is None:
        raise NotAssignedError(
            f"image {image_sha[:12]}... is not in reader {reader_id}'s queue for session {session_id}; "
            "only assigned images can be annotated"
        )


def _rasterise(
    s: Session, image_sha: str, canvas: dict[str, Any], background_fit: Any, labels: Any
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Regions (index, type, label, area) and the union mask at the stored image's size."""
    image = s.get(Image, image_sha)
    shape = (image.height, image.width)
    objects = canvas["objects"]
    if labels is None:
        labels = [obj.get("label") for obj in objects]
    regions = region_masks(objects, image_shape=shape, background_fit=background_fit, labels=list(labels))
    unlabelled = [r.index for r in regions if not (isinstance(r.label, str) and r.label.strip())]
    if unlabelled:
        raise AnnotationError(f"canvas object(s) {unlabelled} have no finding label; every region needs one")
    mask = np.zeros(shape, dtype=bool)
    for region in regions:
        mask |= region.mask
    summary = [{"index": r.index, "type": r.kind, "label": r.label.strip(), "area_px": r.area} for r in regions]
    return summary, mask


def _reading(reader_id: int, image_sha: str, session_id: int) -> tuple[Any, ...]:
    """WHERE clauses selecting one reader's reading of one image in one session."""
    return (Annotation.reader_id == reader_id, Annotation.image_sha == image_sha, Annotation.session_id == session_id)


def latest_annotation(s: Session, *, reader_id: int, image_sha: str, session_id: int) -> Annotation | None:
    """The newest version of a reader's annotation of an image in a session, or ``None``."""
    return s.scalar(
        select(Annotation).where(*_reading(reader_id, image_sha, session_id))
        .order_by(Annotation.version.desc()).limit(1)
    )


def annotation_history(s: Session, *, reader_id: int, image_sha: str, session_id: int) -> list[Annotation]:
    """Every version, oldest first."""
    return list(s.scalars(
        select(Annotation).where(*_reading(reader_id, image_sha, session_id)).order_by(Annotation.version)
    ))


def latest_annotations(
    s: Session, *, session_id: int | None = None, reader_id: int | None = None, image_sha: str | None = None
) -> list[Annotation]:
    """Latest version of every (reader, image, session) reading matching the filters."""
    newest = select(
        Annotation.reader_id, Annotation.image_sha, Annotation.session_id, func.max(Annotation.version).label("version")
    )
    filters = (
        (Annotation.session_id, session_id), (Annotation.reader_id, reader_id), (Annotation.image_sha, image_sha)
    )
    for column, value in filters:
        if value is not None:
            newest = newest.where(column == value)
    newest = newest.group_by(Annotation.reader_id, Annotation.image_sha, Annotation.session_id).subquery()
    query = select(Annotation).join(newest, and_(
        Annotation.reader_id == newest.c.reader_id, Annotation.image_sha == newest.c.image_sha,
        Annotation.session_id == newest.c.session_id, Annotation.version == newest.c.version,
    )).order_by(Annotation.session_id, Annotation.reader_id, Annotation.image_sha)
    return list(s.scalars(query))


def annotation_mask(annotation: Annotation) -> np.ndarray:
    """The stored union mask, (H, W) bool at the image's original resolution."""
    return decode_mask(annotation.mask_png)


def submit_annotation(
    s: Session,
    *,
    reader_id: int,
    image_sha: str,
    session_id: int,
    diagnosis: str | None = None,
    confidence: int | None = None,
    canvas_json: Any,
    canvas_width: int,
    canvas_height: int,
    background_fit: Mapping[str, float] | None = None,
    labels: Sequence[str | None] | None = None,
    comment: str | None = None,
    exclusion: str | None = None,
    app_version: str = APP_VERSION,
    canvas_version: str | None = None,
    classes: Sequence[str] = DEFAULT_CLASSES,
) -> Annotation:
    """Submit a reader's first reading of an image: version 1; their draft is deleted.

    ``shown_at`` is copied from the :func:`record_shown` time of version 1 (``None`` if none).

    Parameters
    ----------
    diagnosis : str
        One of ``classes`` or ``"uncertain"`` (case-insensitive; stored canonical). Ignored
        with an ``exclusion`` (stored as ``"excluded"``); ``"excluded"`` without one is refused.
    confidence : int
        1 (guess) to 5 (certain); required unless the film is excluded, optional then.
    canvas_json : dict, str or list
        The canvas ``json_data``; stored without a background image.
    canvas_width, canvas_height : int
        Canvas size in CSS pixels.
    background_fit : dict or None
        The canvas's ``background_fit``, to map canvas pixels to image pixels.
    labels : sequence or None
        Finding label per canvas object (default: each object's own ``label``); every
        region needs one.
    exclusion : str or None
        ``"not a chest film"`` or ``"not readable"``: the reader excludes the film instead of
        reading it. Marks are still stored as given (usually none).

    Returns
    -------
    Annotation
        Flushed (has its id); committed when the caller's transaction ends.

    Raises
    ------
    NotAssignedError, AlreadySubmittedError, AnnotationError, ConcurrentEditError,
    cxr_core.annotation.masks.MaskError
    """
    _queue_item(s, session_id, reader_id, image_sha)
    if latest_annotation(s, reader_id=reader_id, image_sha=image_sha, session_id=session_id) is not None:
        raise AlreadySubmittedError(
            f"reader {reader_id} already submitted image {image_sha[:12]}... in session {session_id}; "
            "use revise_annotation() for a new version"
        )
    fields = _annotation_fields(
        s, image_sha, diagnosis, confidence, exclusion, canvas_json, canvas_width, canvas_height, background_fit,
        labels, comment, app_version, canvas_version, classes,
    )
    annotation = Annotation(
        reader_id=reader_id, image_sha=image_sha, session_id=session_id, version=1,
        shown_at=_shown_at(s, session_id, reader_id, image_sha, 1), **fields,
    )
    s.add(annotation)
    delete_draft(s, reader_id=reader_id, image_sha=image_sha, session_id=session_id)
    flush_or_conflict(s, "submission")
    return annotation


def _annotation_fields(
    s, image_sha, diagnosis, confidence, exclusion, canvas_json, canvas_width, canvas_height, background_fit, labels,
    comment, app_version, canvas_version, classes,
) -> dict[str, Any]:
    answer = check_answer(diagnosis, confidence, exclusion, classes)
    canvas = canvas_dict(canvas_json)
    width, height = check_canvas_size(canvas_width, canvas_height)
    regions, mask = _rasterise(s, image_sha, canvas, background_fit, labels)
    return dict(
        **answer, regions=regions, canvas_json=canvas, canvas_width=width, canvas_height=height,
        background_fit=dict(background_fit) if background_fit is not None else None,
        mask_png=encode_mask(mask), mask_area=int(mask.sum()), app_version=str(app_version)[:64],
        canvas_version=(canvas_version or checks.canvas_version(canvas))[:64], comment=comment,
    )


_KEEP: Any = object()


def revise_annotation(
    s: Session,
    previous_id: int,
    *,
    diagnosis: str = _KEEP,
    confidence: int = _KEEP,
    canvas_json: Any = _KEEP,
    canvas_width: int = _KEEP,
    canvas_height: int = _KEEP,
    background_fit: Mapping[str, float] | None = _KEEP,
    labels: Sequence[str | None] | None = _KEEP,
    comment: str | None = _KEEP,
    exclusion: str | None = _KEEP,
    app_version: str = APP_VERSION,
    canvas_version: str | None = None,
    classes: Sequence[str] = DEFAULT_CLASSES,
) -> Annotation:
    """Add version n+1 of the reading whose latest version is ``previous_id``; n stays.

    Fields not given are kept from version n (labels from its stored regions); the mask is
    rasterised again from the (new or kept) canvas JSON. ``shown_at`` is copied from the
    :func:`record_shown` time of version n+1 (``None`` if none was recorded).

    Exclusions: ``exclusion="not readable"`` turns the reading into an exclusion;
    ``exclusion=None`` turns an exclusion back into a reading (give a diagnosis and a
    confidence). With ``exclusion`` not given, the previous exclusion is kept unless a
    ``diagnosis`` other than ``"excluded"`` is given, which ends it.

    Raises
    ------
    StaleVersionError
        ``previous_id`` is not the latest version (someone revised it meanwhile).
    """
    prev = s.get(Annotation, previous_id)
    if prev is None:
        raise AnnotationError(f"annotation id {previous_id} does not exist")
    latest = latest_annotation(s, reader_id=prev.reader_id, image_sha=prev.image_sha, session_id=prev.session_id)
    if latest.id != prev.id:
        raise StaleVersionError(
            f"annotation {previous_id} is version {prev.version} but version {latest.version} (id {latest.id}) "
            "is the latest; revise that one"
        )
    if labels is _KEEP and canvas_json is _KEEP:
        old = {r["index"]: r["label"] for r in prev.regions}
        labels = [old.get(i) for i in range(len(prev.canvas_json.get("objects", [])))]

    def pick(value: Any, old: Any) -> Any:
        return old if value is _KEEP else value

    if exclusion is _KEEP:
        ends_it = diagnosis is not _KEEP and not is_excluded(diagnosis)
        exclusion = None if ends_it else prev.exclusion
    if check_exclusion(exclusion) is None and diagnosis is _KEEP and prev.exclusion is not None:
        raise AnnotationError(
            f"annotation {prev.id} is an exclusion ({prev.exclusion!r}); give a diagnosis to read the film instead"
        )
    fields = _annotation_fields(
        s, prev.image_sha, pick(diagnosis, prev.diagnosis), pick(confidence, prev.confidence), exclusion,
        pick(canvas_json, prev.canvas_json), pick(canvas_width, prev.canvas_width),
        pick(canvas_height, prev.canvas_height), pick(background_fit, prev.background_fit),
        pick(labels, None), pick(comment, prev.comment), app_version, canvas_version, classes,
    )
    version = prev.version + 1
    annotation = Annotation(
        reader_id=prev.reader_id, image_sha=prev.image_sha, session_id=prev.session_id,
        version=version, supersedes_id=prev.id,
        shown_at=_shown_at(s, prev.session_id, prev.reader_id, prev.image_sha, version), **fields,
    )
    s.add(annotation)
    flush_or_conflict(s, "revision")
    return annotation


# --- reading times ---------------------------------------------------------------------------


def _shown_at(s: Session, session_id: int, reader_id: int, image_sha: str, version: int) -> datetime | None:
    return s.scalar(select(ReadingStart.shown_at).where(
        ReadingStart.session_id == session_id, ReadingStart.reader_id == reader_id,
        ReadingStart.image_sha == image_sha, ReadingStart.version == version,
    ))


def record_shown(
    s: Session, *, reader_id: int, image_sha: str, session_id: int, now: datetime | None = None
) -> datetime:
    """Note when a film was first shown to a reader for the version they are about to make.

    The version is the latest submitted one + 1 (1 while pending, 2 once they revise version 1).
    Only the first call per version writes; later calls return that first time unchanged, so a
    page may call this on every rerun. Two concurrent first calls are safe: the loser's insert
    fails inside a SAVEPOINT and it returns the winner's time.

    Parameters
    ----------
    now : datetime or None
        The time to record (default: the server's clock, UTC); naive means UTC.

    Returns
    -------
    datetime
        The recorded time, timezone-aware UTC.

    Raises
    ------
    NotAssignedError
        The image is not in that reader's queue for that session.
    """
    _queue_item(s, session_id, reader_id, image_sha)
    latest = s.scalar(select(func.max(Annotation.version)).where(*_reading(reader_id, image_sha, session_id)))
    version = (latest or 0) + 1
    found = _shown_at(s, session_id, reader_id, image_sha, version)
    if found is not None:
        return found
    when = utcnow() if now is None else now
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    try:
        with s.begin_nested():
            s.add(ReadingStart(session_id=session_id, reader_id=reader_id, image_sha=image_sha, version=version,
                               shown_at=when))
    except IntegrityError:  # another request recorded it between our read and our insert
        found = _shown_at(s, session_id, reader_id, image_sha, version)
        if found is None:
            raise
        return found
    return when


# --- drafts ----------------------------------------------------------------------------------


def save_draft(
    s: Session,
    *,
    reader_id: int,
    image_sha: str,
    session_id: int,
    canvas_json: Any,
    canvas_width: int,
    canvas_height: int,
    background_fit: Mapping[str, float] | None = None,
    labels: Sequence[str | None] = (),
    diagnosis: str | None = None,
    confidence: int | None = None,
    exclusion: str | None = None,
    comment: str | None = None,
) -> Draft:
    """Create or replace the reader's unsubmitted drawing for an image.

    Checked only for shape, except the answer: an ``exclusion`` must be one of
    :data:`EXCLUSION_REASONS` and stores diagnosis ``"excluded"``; ``"excluded"`` without one is
    refused. Diagnosis, confidence and the free ``comment`` are otherwise kept as given (a draft
    may be half done).
    """
    _queue_item(s, session_id, reader_id, image_sha)
    reason = check_exclusion(exclusion)
    if reason is None and is_excluded(diagnosis):
        raise AnnotationError(
            f"diagnosis {diagnosis!r} needs an exclusion reason; pass exclusion= one of "
            f"{', '.join(repr(r) for r in EXCLUSION_REASONS)}"
        )
    canvas = canvas_dict(canvas_json)
    width, height = check_canvas_size(canvas_width, canvas_height)
    values = dict(
        canvas_json=canvas, canvas_width=width, canvas_height=height,
        background_fit=dict(background_fit) if background_fit is not None else None,
        labels=list(labels), diagnosis=EXCLUDED if reason else diagnosis, confidence=confidence, exclusion=reason,
        comment=(comment or None),
    )
    draft = get_draft(s, reader_id=reader_id, image_sha=image_sha, session_id=session_id)
    if draft is None:
        draft = Draft(reader_id=reader_id, image_sha=image_sha, session_id=session_id, **values)
        s.add(draft)
    else:
        for key, value in values.items():
            setattr(draft, key, value)
    flush_or_conflict(s, "draft")
    return draft


def get_draft(s: Session, *, reader_id: int, image_sha: str, session_id: int) -> Draft | None:
    """The reader's saved drawing for an image, or ``None``."""
    return s.scalar(
        select(Draft).where(Draft.reader_id == reader_id, Draft.image_sha == image_sha, Draft.session_id == session_id)
    )


def delete_draft(s: Session, *, reader_id: int, image_sha: str, session_id: int) -> bool:
    """Discard the reader's drawing (e.g. "clear"); True if there was one."""
    result = s.execute(
        delete(Draft).where(Draft.reader_id == reader_id, Draft.image_sha == image_sha, Draft.session_id == session_id)
    )
    return bool(result.rowcount)
