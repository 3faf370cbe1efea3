"""SQLite failures as plain messages: busy, read-only, full or failing disk, missing or damaged file.

A page or the CLI catches these like any :class:`~cxr_core.errors.CXRError` and shows the message
as it is. Every one means the transaction was rolled back: nothing of the failed action was
written, and what was committed before (every acknowledged save) is still there. Messages name
no server path (they are shown to readers).

:func:`translate` maps a :mod:`sqlite3` error to one of these; :mod:`cxr_core.storage` calls it
from the engine's ``handle_error`` hook, so it applies to every statement and every COMMIT.
"""

from __future__ import annotations

import sqlite3

from cxr_core.errors import CXRError

# SQLite primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the low byte.
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR = 5, 6, 8, 10
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 11, 13, 14, 26


class StorageUnavailableError(CXRError):
    """The annotation database cannot take or give data now; nothing of this action was saved."""


class StorageBusyError(StorageUnavailableError):
    """Another save held the database's write lock for longer than the engine's wait bound."""


class StorageReadOnlyError(StorageUnavailableError):
    """The database file, its folder or its disk is read-only."""


class StorageFullError(StorageUnavailableError):
    """The disk (or the database's size limit) has no room for the change."""


class WriteInReadTransactionError(RuntimeError):
    """Code wrote inside :func:`cxr_core.storage.read_transaction`: a programming error, not the user's.

    Read sessions never take the write lock, so they cannot write; use ``factory.begin()``.
    """


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _code_from_text(text: str) -> int | None:
    """The result code from the message, for errors raised without one (older Pythons, wrappers)."""
    for needle, code in (("database is locked", SQLITE_BUSY), ("database is busy", SQLITE_BUSY),
                         ("database table is locked", SQLITE_LOCKED), ("readonly database", SQLITE_READONLY),
                         ("disk is full", SQLITE_FULL), ("disk i/o error", SQLITE_IOERR),
                         ("unable to open database", SQLITE_CANTOPEN), ("not a database", SQLITE_NOTADB),
                         ("malformed", SQLITE_CORRUPT)):
        if needle in text.lower():
            return code
    return None


def busy_error(wait_s: float, *, reading: bool) -> StorageBusyError:
    """The error for a lock not obtained within ``wait_s`` seconds."""
    if reading:
        return StorageBusyError(
            f"the annotation database is busy (another program held it for more than {wait_s:g} s); "
            "nothing could be loaded - reload the page in a moment"
        )
    return StorageBusyError(
        f"the annotation database is busy (another save held it for more than {wait_s:g} s); "
        "nothing was saved yet - try again in a moment"
    )


def translate(exc: BaseException, *, wait_s: float, reading: bool | None) -> Exception | None:
    """The plain error for a :mod:`sqlite3` failure, or ``None`` when it is none of the above.

    Parameters
    ----------
    exc : BaseException
        The DBAPI exception (``sqlite3.Error``).
    wait_s : float
        The engine's busy bound, quoted in the busy message.
    reading : bool or None
        ``True`` inside :func:`~cxr_core.storage.read_transaction` (a read-only error there is a
        :class:`WriteInReadTransactionError`), ``False`` in a write transaction, ``None`` when unknown
        (opening a connection).
    """
    if not isinstance(exc, sqlite3.Error):
        return None
    code = _primary_code(exc)
    if code is None:
        code = _code_from_text(str(exc))
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return busy_error(wait_s, reading=bool(reading))
    if code == SQLITE_READONLY and reading:
        return WriteInReadTransactionError(
            f"a statement inside read_transaction() tried to write ({exc}); frame writes with factory.begin()"
        )
    before = "nothing was saved; readings saved before are intact"
    if code == SQLITE_READONLY:
        return StorageReadOnlyError(
            f"the annotation database cannot be written (its file, folder or disk is read-only); {before} - "
            "ask the administrator to make the database writable"
        )
    if code == SQLITE_FULL:
        return StorageFullError(
            f"the disk holding the annotation database is full; {before} - ask the administrator to free space"
        )
    if code == SQLITE_IOERR:
        return StorageUnavailableError(
            f"the annotation database could not be read or written (disk I/O error); {before} - "
            "ask the administrator to check the disk"
        )
    if code == SQLITE_CANTOPEN:
        return StorageUnavailableError(
            "the annotation database cannot be opened (missing folder, permissions or disk); nothing was saved - "
            "ask the administrator to check the database location"
        )
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return StorageUnavailableError(
            "the annotation database file is damaged or is not a database; nothing was saved - "
            "ask the administrator to restore it from a backup"
        )
    return None
