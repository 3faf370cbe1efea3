"""How long readers took per case, from times the server recorded itself.

When a page first shows a film for the version a reader is about to make, it calls
:func:`cxr_core.storage.record_shown`; the submission (or revision) copies that time into
``Annotation.shown_at`` and is stamped ``created_at`` when saved. A version's reading time is
``created_at - shown_at``: it covers looking, marking, answering and any interruption in
between, so read the median and the interquartile range rather than the mean. Versions
without a recorded start (saved before this existed, or by a client that never called
``record_shown``) are counted as untimed, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr_core.storage.schema import Annotation, AnnotationSession, Reader


@dataclass(frozen=True)
class ReadingTime:
    """One submitted version of one reading and how long it took (``None`` when untimed)."""

    session: str  # session name
    reader: str  # reader name
    image_sha: str
    version: int
    shown_at: datetime | None  # first shown for this version
    submitted_at: datetime
    seconds: float | None  # submitted_at - shown_at


@dataclass(frozen=True)
class TimeSummary:
    """Reading times of one reader in one session, or of all its readers (``reader is None``)."""

    session: str
    reader: str | None  # None: all readers of the session together
    n: int  # timed versions
    median_s: float | None
    q1_s: float | None  # 25th percentile
    q3_s: float | None  # 75th percentile
    untimed: int = 0  # versions without a recorded start, left out of n and the figures

    @property
    def iqr_s(self) -> float | None:
        """Interquartile range, q3 - q1 (``None`` without timed versions)."""
        return None if self.q1_s is None or self.q3_s is None else self.q3_s - self.q1_s


def reading_times(s: Session, *, session_id: int | None = None, reader_id: int | None = None) -> list[ReadingTime]:
    """Every submitted version (revisions included), optionally of one session and/or reader.

    Ordered by session, reader name, submission time and version.
    """
    query = (
        select(AnnotationSession.name, Reader.name, Annotation.image_sha, Annotation.version, Annotation.shown_at,
               Annotation.created_at)
        .join(AnnotationSession, AnnotationSession.id == Annotation.session_id)
        .join(Reader, Reader.id == Annotation.reader_id)
        .order_by(AnnotationSession.id, Reader.name, Annotation.created_at, Annotation.version, Annotation.image_sha)
    )
    if session_id is not None:
        query = query.where(Annotation.session_id == session_id)
    if reader_id is not None:
        query = query.where(Annotation.reader_id == reader_id)
    return [
        ReadingTime(session, reader, sha, version, shown, submitted,
                    None if shown is None else (submitted - shown).total_seconds())
        for session, reader, sha, version, shown, submitted in s.execute(query)
    ]


def _summary(session: str, reader: str | None, times: list[ReadingTime]) -> TimeSummary:
    timed = [t.seconds for t in times if t.seconds is not None]
    if not timed:
        return TimeSummary(session, reader, 0, None, None, None, untimed=len(times))
    q1, median, q3 = (float(q) for q in np.percentile(timed, [25, 50, 75]))
    return TimeSummary(session, reader, len(timed), median, q1, q3, untimed=len(times) - len(timed))


def summarise_times(times: Iterable[ReadingTime]) -> list[TimeSummary]:
    """Median and quartiles of reading time per (session, reader), then per session for all readers.

    Quartiles are :func:`numpy.percentile` with its default ``method="linear"`` (the 25th, 50th
    and 75th percentiles interpolated between the sorted times). Untimed versions are counted in
    ``untimed`` and left out of ``n`` and the figures. Every version given counts as one reading,
    so pass :func:`reading_times` output as it is for all versions, or filter it first.

    Returns
    -------
    list of TimeSummary
        Sessions in order of first appearance; within one, readers by name, then the
        all-readers row (``reader=None``).
    """
    by_session: dict[str, dict[str, list[ReadingTime]]] = {}
    for t in times:
        by_session.setdefault(t.session, {}).setdefault(t.reader, []).append(t)
    out = []
    for session, readers in by_session.items():
        out += [_summary(session, reader, readers[reader]) for reader in sorted(readers)]
        out.append(_summary(session, None, [t for group in readers.values() for t in group]))
    return out
