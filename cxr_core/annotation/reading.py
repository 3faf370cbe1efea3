"""A reader's way through a session, and each film's drawing kept whole whatever the canvas does.

No Streamlit here; the annotate page keeps one :class:`Reading` per film it has opened in a
browser session and asks it what to mount, what the canvas's report means, and what to store.

Why a film's drawing lives here and not in the canvas
------------------------------------------------------
The canvas is a browser component keyed per mount. Streamlit drops a widget's state when a run
does not draw it (another film is shown), and a newly mounted canvas reports exactly the
``initial_drawing`` it was given. So a drawing that only lived in the canvas is lost on the way
back, and a stale ``initial_drawing`` reported by a fresh mount would overwrite the draft with
whatever the film was first opened with (issue 12: "the draft is overwritten with an empty
drawing"). A :class:`Reading` holds the drawing in the **full frame** (see
:mod:`cxr_core.annotation.canvas_view`) and follows two rules:

- every mount is opened with the current drawing, moved into the view it shows
  (:meth:`Reading.mount`), under a new generation (a new canvas key);
- a report equal to what the mount was opened with changes nothing (:meth:`Reading.absorb`), so
  a remount never writes; any other report is moved back into the full frame before it is kept.

Which film is open is a queue position, never a label (:func:`step`, :func:`after_submit`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cxr_core.annotation import drawing_key, region_labels
from cxr_core.annotation.canvas_frames import View, frame_fit, from_view, refit_drawing, rescale_drawing, to_view
from cxr_core.annotation.masks import canvas_objects

# --- which film ------------------------------------------------------------------------------


def step(total: int, position: int, delta: int) -> int | None:
    """The position ``delta`` films away from ``position`` in a queue of ``total``, or None past either end."""
    target = position + delta
    return target if 0 <= target < total else None


def after_submit(done: list[bool], position: int) -> int:
    """The film to open after submitting ``position``: the next one still to read, wrapping round.

    ``done`` is each position's state after the submission. With nothing left to read, the
    submitted film stays open (its reading and, if allowed, the model's result).

    Examples
    --------
    >>> after_submit([True, False, True, False], 2)
    3
    >>> after_submit([False, True, True], 2)
    0
    >>> after_submit([True, True], 1)
    1
    """
    n = len(done)
    return next((p % n for p in range(position + 1, position + n + 1) if not done[p % n]), position)


def opening_position(total: int, wanted: int | None, next_pending: int | None) -> int:
    """The film to open first: ``wanted`` (e.g. from the address bar) if it is a position, else the next to read."""
    if isinstance(wanted, int) and 0 <= wanted < total:
        return wanted
    return next_pending if next_pending is not None else max(total - 1, 0)


# --- the drawing of one film -----------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """The full frame: a ``width x height`` canvas (CSS pixels) with the whole film contain-fitted."""

    width: int
    height: int
    film_shape: tuple[int, int]

    @property
    def fit(self) -> dict[str, float]:
        """The ``background_fit`` a full-frame drawing is measured and stored with."""
        return frame_fit(self.film_shape, self.width, self.height)

    def bring_in(self, canvas_json: Any, *, fit: Mapping[str, float] | None, width: int, height: int) -> dict:
        """A drawing stored with another canvas size (its ``fit``, or its size when no fit) in this frame."""
        drawing = {"objects": canvas_objects(canvas_json)}
        if isinstance(canvas_json, Mapping) and canvas_json.get("version"):
            drawing["version"] = canvas_json["version"]
        if not drawing["objects"]:
            return drawing
        if fit and fit.get("natural_width"):
            if _same_fit(fit, self.fit):
                return drawing
            return refit_drawing(drawing, fit, self.fit)
        if (width, height) == (self.width, self.height):
            return drawing
        return rescale_drawing(drawing, width, height, self.width, self.height, film_shape=self.film_shape)


def _same_fit(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    keys = ("natural_width", "natural_height", "scale_x", "scale_y", "offset_x", "offset_y")
    return all(abs(float(a[k]) - float(b[k])) < 1e-9 for k in keys)


@dataclass(frozen=True)
class Answers:
    """The reader's answers besides the marks (a draft may hold any of them unset)."""

    diagnosis: str | None = None
    confidence: int | None = None
    exclusion: str | None = None
    comment: str | None = None


@dataclass
class Reading:
    """One film's drawing and answers in one browser session, and the canvas currently showing them.

    ``drawing`` is in ``frame`` (the full frame). ``initial`` is what the mounted canvas (key
    generation ``generation``) was opened with, in ``view``; ``opened_with`` the full-frame
    drawing at that moment. ``saved`` is :meth:`key` of what was last stored (None: nothing yet).
    ``fresh``: this generation's canvas has not been drawn yet (so it cannot have reported).
    """

    drawing: dict
    frame: Frame
    answers: Answers = Answers()
    saved: str | None = None
    generation: int = 0
    view: View = View()
    initial: dict = field(default_factory=lambda: {"objects": []})
    opened_with: dict = field(default_factory=lambda: {"objects": []})
    fresh: bool = True

    @classmethod
    def open(cls, drawing: Any, frame: Frame, answers: Answers = Answers(), *, view: View = View(),
             stored: bool = True) -> Reading:
        """A reading opened with a full-frame ``drawing`` (``stored``: it is already what the database holds)."""
        reading = cls({"objects": canvas_objects(drawing)}, frame, answers)
        if isinstance(drawing, Mapping) and drawing.get("version"):
            reading.drawing["version"] = drawing["version"]
        reading._open(view)
        reading.saved = reading.key() if stored else None
        return reading

    def _open(self, view: View) -> None:
        self.view = view
        self.fresh = True
        self.opened_with = self.drawing
        self.initial = to_view(self.drawing, view, self.frame.width, self.frame.height,
                               film_shape=self.frame.film_shape)

    def mount(self, view: View, frame: Frame | None = None) -> None:
        """Open a new canvas (new generation) on the current drawing, in ``view`` (and ``frame``, if it changed)."""
        if frame is not None and frame != self.frame:
            old = self.frame
            self.drawing = frame.bring_in(self.drawing, fit=old.fit, width=old.width, height=old.height)
            self.frame = frame
        self.generation += 1
        self._open(view)

    def absorb(self, report: Any) -> bool:
        """Take the mounted canvas's report (its ``json_data``, in ``view``); True if the drawing changed.

        A report of exactly what the mount was opened with is the mount itself speaking (or every
        change undone): the drawing goes back to ``opened_with``, never to anything older.
        """
        objects = canvas_objects(report)
        if objects == canvas_objects(self.initial):
            new = self.opened_with
        else:
            new = from_view({"objects": objects}, self.view, self.frame.width, self.frame.height,
                            film_shape=self.frame.film_shape)
            if isinstance(report, Mapping) and report.get("version"):
                new["version"] = report["version"]
        changed = canvas_objects(new) != canvas_objects(self.drawing)
        self.drawing = new
        return changed

    def answer(self, **changes: Any) -> None:
        """Change some answers (diagnosis=..., confidence=..., exclusion=..., comment=...)."""
        self.answers = replace(self.answers, **changes)

    def key(self) -> str:
        """Equal keys mean nothing new to store (marks, answers and comment).

        The frame counts only when there are marks: an empty drawing is the same in any frame,
        so opening a film in another canvas size writes no draft.
        """
        a = self.answers
        size = (self.frame.width, self.frame.height) if canvas_objects(self.drawing) else None
        return drawing_key(self.drawing, a.diagnosis, a.confidence, a.exclusion, a.comment or None, size)

    @property
    def unsaved(self) -> bool:
        return self.key() != self.saved

    def draft_fields(self) -> dict[str, Any]:
        """Keyword arguments of :func:`cxr_core.storage.save_draft` for this reading."""
        a = self.answers
        return dict(canvas_json=copy.deepcopy(self.drawing), canvas_width=self.frame.width,
                    canvas_height=self.frame.height, background_fit=self.frame.fit,
                    labels=region_labels(self.drawing), diagnosis=None if a.exclusion else a.diagnosis,
                    confidence=a.confidence, exclusion=a.exclusion, comment=a.comment or None)

    def stored(self) -> None:
        """Note that what :meth:`draft_fields` gave is now in the database."""
        self.saved = self.key()
