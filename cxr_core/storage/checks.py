"""Checks a save passes before it is stored: the reader's answer, the canvas, and collisions.

A diagnosis is one of the model's classes or :data:`UNCERTAIN`; an exclusion one of
:data:`~cxr_core.storage.schema.EXCLUSION_REASONS` (stored as diagnosis ``"excluded"``); a
confidence 1 to 5. Used by :mod:`cxr_core.storage.annotation_store` and
:mod:`cxr_core.storage.model_results`; the errors are re-exported by :mod:`cxr_core.storage`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cxr_core.annotation.masks import canvas_objects
from cxr_core.errors import CXRError
from cxr_core.storage.schema import EXCLUDED, EXCLUSION_REASONS

#: The expert's diagnosis when they cannot choose a class.
UNCERTAIN = "uncertain"
#: Canvas JSON keys not stored (the background image would store the X-ray a second time).
_DROPPED_CANVAS_KEYS = ("backgroundImage", "overlayImage")


class AnnotationError(CXRError):
    """An annotation or draft that cannot be saved as given."""


class NotAssignedError(AnnotationError):
    """The image is not in that reader's queue for that session."""


class AlreadySubmittedError(AnnotationError):
    """A first submission for an image the reader already submitted (revise instead)."""


class StaleVersionError(AnnotationError):
    """A revision of a version that is no longer the latest."""


class ConcurrentEditError(AnnotationError):
    """Another save of the same reading landed first; reload and try again."""


def canvas_version(canvas_json: Mapping[str, Any]) -> str:
    try:
        package = importlib.metadata.version("streamlit-drawable-canvas")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    return f"drawable-canvas {package}; fabric {canvas_json.get('version', 'unknown')}"[:64]


def canvas_dict(canvas_json: Any) -> dict[str, Any]:
    """The canvas JSON as a dict with an ``objects`` list, background image dropped."""
    if isinstance(canvas_json, Mapping):
        data = {k: v for k, v in canvas_json.items() if k not in _DROPPED_CANVAS_KEYS}
    else:
        data = {}
    data["objects"] = canvas_objects(canvas_json)  # validates strings, lists and dicts alike
    return data


def is_excluded(diagnosis: Any) -> bool:
    return isinstance(diagnosis, str) and diagnosis.strip().lower() == EXCLUDED


def check_exclusion(exclusion: Any) -> str | None:
    """The canonical reason, ``None`` for no exclusion; anything else is refused."""
    if exclusion is None:
        return None
    for reason in EXCLUSION_REASONS:
        if isinstance(exclusion, str) and exclusion.strip().lower() == reason:
            return reason
    raise AnnotationError(
        f"exclusion reason {exclusion!r}; expected one of {', '.join(repr(r) for r in EXCLUSION_REASONS)} (or None)"
    )


def check_diagnosis(diagnosis: str, classes: Sequence[str]) -> str:
    accepted = [*classes, UNCERTAIN]
    if is_excluded(diagnosis):
        raise AnnotationError(
            f"diagnosis {diagnosis!r} needs an exclusion reason; pass exclusion= one of "
            f"{', '.join(repr(r) for r in EXCLUSION_REASONS)}, or choose one of {', '.join(accepted)}"
        )
    for name in accepted:
        if isinstance(diagnosis, str) and diagnosis.strip().lower() == name.lower():
            return name
    raise AnnotationError(f"diagnosis {diagnosis!r}; expected one of {', '.join(accepted)}")


def check_answer(diagnosis: Any, confidence: Any, exclusion: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Diagnosis, confidence and exclusion as stored: an exclusion stores EXCLUDED and an optional confidence."""
    reason = check_exclusion(exclusion)
    if reason is not None:
        return dict(diagnosis=EXCLUDED, exclusion=reason,
                    confidence=None if confidence is None else check_confidence(confidence))
    return dict(diagnosis=check_diagnosis(diagnosis, classes), exclusion=None,
                confidence=check_confidence(confidence))


def check_confidence(confidence: Any) -> int:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, np.integer)) or not 1 <= confidence <= 5:
        raise AnnotationError(f"confidence {confidence!r}; expected an integer 1 (guess) to 5 (certain)")
    return int(confidence)


def check_canvas_size(width: Any, height: Any) -> tuple[int, int]:
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise AnnotationError(f"canvas size {width!r} x {height!r}; expected two positive integers")
    return int(width), int(height)


def flush_or_conflict(s: Session, what: str) -> None:
    """Flush ``s``; a unique-key collision (another save of the same row landed first) becomes ConcurrentEditError."""
    try:
        s.flush()
    except IntegrityError as err:
        raise ConcurrentEditError(f"{what} collided with another save ({err.orig}); reload and try again") from err


__all__ = [
    "AlreadySubmittedError", "AnnotationError", "ConcurrentEditError", "NotAssignedError", "StaleVersionError",
    "UNCERTAIN", "canvas_dict", "canvas_version", "check_answer", "check_canvas_size", "check_confidence",
    "check_diagnosis", "check_exclusion", "flush_or_conflict", "is_excluded",
]
