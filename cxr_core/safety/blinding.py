"""The one gate every page passes before showing a model's output for an image.

Blind means blind: while an image is pending (assigned, not yet submitted) in a *blind*
session of a reader, that reader must not see the model's probabilities, predicted class,
heatmap or agreement scores for it, on any page. Once they have submitted their reading in
every blind session that holds the image for them, they may reveal it. Images are matched by
pixel SHA-256, so uploading the same pixels again on another page does not get around it; given
the pixels, the gate also recognises near-copies of a pending film (re-saved as JPEG, cropped by
a few pixels, retouched) by perceptual hash (:mod:`cxr_core.safety.near_copy`).

With no reader chosen (``reader_id=None``) the gate is stricter: the output is hidden while
the image is pending for *anyone* in a blind session, so an expert cannot peek by not saying
who they are.

Typical use in a page::

    decision = blinding.model_output_decision(s, reader_id, xray.sha256)
    if not decision.allowed:
        st.info(decision.reason)
        return
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from cxr_core.errors import CXRError
from cxr_core.storage.schema import Annotation, AnnotationSession, ModelResult, QueueItem, Reader


class BlindedError(CXRError):
    """Model output was requested for an image the reader must still read blind."""


@dataclass(frozen=True)
class BlindingDecision:
    """Whether model output may be shown, and why, in words a reader can be shown.

    Attributes
    ----------
    allowed : bool
    reason : str
    pending_sessions : tuple of str
        Names of the blind sessions in which the image is still pending.
    """

    allowed: bool
    reason: str
    pending_sessions: tuple[str, ...] = ()


def _pending_query(reader_id: int | None):
    """Blind-session queue items with no submitted annotation yet (optionally one reader's)."""
    submitted = exists(select(Annotation.id).where(
        Annotation.session_id == QueueItem.session_id,
        Annotation.reader_id == QueueItem.reader_id,
        Annotation.image_sha == QueueItem.image_sha,
    ))
    query = (
        select(QueueItem.image_sha, AnnotationSession.name)
        .join(AnnotationSession, AnnotationSession.id == QueueItem.session_id)
        .where(AnnotationSession.blind.is_(True), ~submitted)
    )
    if reader_id is not None:
        query = query.where(QueueItem.reader_id == reader_id)
    return query


#: Perceptual hashes of stored films by pixel SHA-256 (stored films never change, so entries never go stale).
_HASHES: dict[str, str] = {}


def _stored_hash(s: Session, image_sha: str) -> str:
    from cxr_core import storage
    from cxr_core.safety import near_copy

    if image_sha not in _HASHES:
        if len(_HASHES) > 200_000:
            _HASHES.clear()
        _HASHES[image_sha] = near_copy.perceptual_hash(storage.load_pixels(s, image_sha))
    return _HASHES[image_sha]


def _near_copy_decision(s: Session, reader_id: int | None, image_sha: str,
                        pixels: np.ndarray) -> BlindingDecision | None:
    """A refusal when ``pixels`` look like a film still pending for this reader (or anyone), else None."""
    from cxr_core.safety import near_copy

    pending: dict[str, set[str]] = {}
    for sha, name in s.execute(_pending_query(reader_id)):
        pending.setdefault(sha, set()).add(name)
    if not pending:
        return None
    if image_sha not in _HASHES:  # the pixel hash names these pixels: hash an uploaded film once, not every rerun
        _HASHES[image_sha] = near_copy.perceptual_hash(pixels)
    query = _HASHES[image_sha]
    close = near_copy.near_copies(query, {sha: _stored_hash(s, sha) for sha in pending})
    if not close:
        return None
    names = tuple(sorted(set().union(*(pending[sha] for sha in close))))
    quoted = ", ".join(repr(n) for n in names)
    who = "your blind session(s)" if reader_id is not None else "blind session(s)"
    return BlindingDecision(
        False,
        f"Model output hidden: this film looks like a copy (re-saved, cropped or edited) of a film pending in {who} "
        f"{quoted}. Readers see model output for it after submitting their own reading.",
        names,
    )


def model_output_decision(s: Session, reader_id: int | None, image_sha: str,
                          pixels: np.ndarray | None = None) -> BlindingDecision:
    """May ``reader_id`` see model output for the image with pixel hash ``image_sha``?

    Parameters
    ----------
    s : Session
    reader_id : int or None
        The reader using the app; ``None`` when nobody is chosen (stricter, see module doc).
    image_sha : str
        Pixel SHA-256 of the image (``XRay.sha256``); images never stored are not blinded.
    pixels : (H, W) ndarray, optional
        The film itself; when given, a near-copy of a pending film is hidden too.
    """
    if reader_id is not None and s.get(Reader, reader_id) is None:
        raise CXRError(f"reader id {reader_id} does not exist; choose a reader from the list")
    from cxr_core.storage import Redaction

    # A film stored redacted (cxr_core.safety.redaction) is the same film as its unredacted source.
    same = {image_sha, *s.scalars(select(Redaction.image_sha).where(Redaction.source_sha == image_sha))}
    names = tuple(sorted(set(s.scalars(
        _pending_query(reader_id).where(QueueItem.image_sha.in_(same)).with_only_columns(AnnotationSession.name)
    ))))
    if names:
        quoted = ", ".join(repr(n) for n in names)
        if reader_id is None:
            reason = (f"Model output hidden: this image is still being read blind in session(s) {quoted}. "
                      "Choose who you are; readers see it after submitting their own reading.")
        else:
            reason = (f"Model output hidden: this image is pending in your blind session(s) {quoted}. "
                      "Submit your reading first; then you can reveal the model's result.")
        return BlindingDecision(False, reason, names)
    if pixels is not None:
        copy = _near_copy_decision(s, reader_id, image_sha, pixels)
        if copy is not None:
            return copy
    assigned = s.scalar(
        select(exists().where(
            QueueItem.image_sha == image_sha,
            QueueItem.session_id == AnnotationSession.id,
            AnnotationSession.blind.is_(True),
            *(() if reader_id is None else (QueueItem.reader_id == reader_id,)),
        ))
    )
    if assigned:
        return BlindingDecision(
            True, "Your reading of this image is submitted in every blind session; the model's result may be revealed."
        )
    return BlindingDecision(True, "No blind session holds this image for this reader.")


def can_show_model_output(s: Session, reader_id: int | None, image_sha: str,
                          pixels: np.ndarray | None = None) -> bool:
    """``model_output_decision(...).allowed``: the boolean every page checks."""
    return model_output_decision(s, reader_id, image_sha, pixels).allowed


def require_model_output(s: Session, reader_id: int | None, image_sha: str, pixels: np.ndarray | None = None) -> None:
    """Raise :class:`BlindedError` (with the reason) unless model output may be shown."""
    decision = model_output_decision(s, reader_id, image_sha, pixels)
    if not decision.allowed:
        raise BlindedError(decision.reason)


def hidden_images(s: Session, reader_id: int | None) -> set[str]:
    """Pixel hashes of every image whose model output is hidden from this reader (for lists)."""
    return set(s.scalars(_pending_query(reader_id).with_only_columns(QueueItem.image_sha)))


def visible_model_results(s: Session, reader_id: int | None, image_sha: str) -> list[ModelResult]:
    """Stored model results for the image, or an empty list while it must stay hidden."""
    if not can_show_model_output(s, reader_id, image_sha):
        return []
    return list(s.scalars(select(ModelResult).where(ModelResult.image_sha == image_sha).order_by(ModelResult.id)))
