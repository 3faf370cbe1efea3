"""The audit trail: who did what, when, to which film, in an append-only table.

Logins and failures, model output shown for a film, reveals, refusal overrides, exports, and
changes to sessions and users are recorded with :func:`record` in the caller's transaction (the
event is kept only if the action is). Rows of ``audit_events`` can be neither changed nor deleted:
the ORM refuses (:class:`~cxr_core.storage.schema.ImmutableAuditEventError`) and so does the
database, by triggers from migration 0005, whatever client writes to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr_core.errors import CXRError
from cxr_core.io.csv_safe import dict_rows_csv
from cxr_core.storage.schema import AuditEvent

#: What can be recorded. ``who`` is the user's name; ``film_sha`` the film's pixel SHA-256.
AUDIT_ACTIONS = (
    "login", "login_failed", "logout", "model_output_shown", "reveal", "refusal_override", "export",
    "session_change", "user_change", "model_change",
)
#: Columns of :func:`events_csv`, in order.
CSV_COLUMNS = ("id", "at", "who", "action", "film_sha", "detail")
MAX_DETAIL = 2000


class TrailError(CXRError):
    """An event that cannot be recorded or a filter that cannot be applied as given."""


@dataclass(frozen=True)
class Event:
    """One recorded event (``at`` is timezone-aware UTC)."""

    id: int
    at: datetime
    who: str | None
    action: str
    film_sha: str | None
    detail: str


def _utc(when: datetime, what: str) -> datetime:
    if not isinstance(when, datetime):
        raise TrailError(f"{what} {when!r}; expected a datetime")
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def record(s: Session, who: str | None, action: str, *, film_sha: str | None = None, detail: str = "",
           at: datetime | None = None) -> None:
    """Append one event (flushed, committed with the caller's transaction).

    Parameters
    ----------
    who : str or None
        The user's name; ``None`` for the operator at the command line or the system.
    action : str
        One of :data:`AUDIT_ACTIONS`.
    film_sha : str or None
        The film's pixel SHA-256 (64 lower-case hex digits) when the event concerns one film.
    detail : str
        Free text (model, session, format, reason...), cut at 2000 characters.
    at : datetime or None
        When it happened (default now; naive times are taken as UTC).
    """
    if action not in AUDIT_ACTIONS:
        raise TrailError(f"audit action {action!r}; expected one of {', '.join(AUDIT_ACTIONS)}")
    if film_sha is not None and (len(film_sha) != 64 or any(c not in "0123456789abcdef" for c in film_sha)):
        raise TrailError(f"film hash {film_sha!r:.80}; expected 64 lower-case hex digits")
    when = datetime.now(timezone.utc) if at is None else _utc(at, "time")
    s.add(AuditEvent(at=when, who=None if who is None else str(who)[:200], action=action, film_sha=film_sha,
                     detail=str(detail or "")[:MAX_DETAIL]))
    s.flush()


def events(s: Session, *, who: str | None = None, action: str | None = None, since: datetime | None = None,
           until: datetime | None = None, film_sha: str | None = None, limit: int | None = None) -> list[Event]:
    """Recorded events, oldest first, filtered by each argument given.

    ``since`` is inclusive and ``until`` exclusive (``since <= at < until``); ``film_sha`` may be
    a prefix of the hash (at least 6 characters, as the pages show it); ``limit`` keeps the newest.
    """
    query = select(AuditEvent)
    if who is not None:
        query = query.where(AuditEvent.who == who)
    if action is not None:
        if action not in AUDIT_ACTIONS:
            raise TrailError(f"audit action {action!r}; expected one of {', '.join(AUDIT_ACTIONS)}")
        query = query.where(AuditEvent.action == action)
    if since is not None:
        query = query.where(AuditEvent.at >= _utc(since, "since"))
    if until is not None:
        query = query.where(AuditEvent.at < _utc(until, "until"))
    if film_sha:
        prefix = film_sha.strip().lower()
        if len(prefix) < 6 or any(c not in "0123456789abcdef" for c in prefix):
            raise TrailError(f"film hash {film_sha!r:.80}; expected at least 6 hex digits of the film's hash")
        query = query.where(AuditEvent.film_sha.startswith(prefix, autoescape=True))
    if limit is not None:
        newest = query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(int(limit))
        rows = list(s.scalars(newest))[::-1]
    else:
        rows = list(s.scalars(query.order_by(AuditEvent.at, AuditEvent.id)))
    return [Event(r.id, r.at, r.who, r.action, r.film_sha, r.detail) for r in rows]


def events_csv(evts: Iterable[Event]) -> str:
    """Events as CSV (:data:`CSV_COLUMNS`), times in ISO 8601 UTC, every text cell neutralised so a
    spreadsheet never runs a user name or detail as a formula (:mod:`cxr_core.io.csv_safe`)."""
    rows = [{"id": e.id, "at": e.at.isoformat(timespec="seconds"), "who": e.who, "action": e.action,
             "film_sha": e.film_sha, "detail": e.detail} for e in evts]
    return dict_rows_csv(rows, CSV_COLUMNS)
