"""Films for a new reading session, screened before the session is made (the sessions page, issue 12).

An administrator picks files (uploads, the bundled samples, or a folder on the server). Each file is
decoded once and screened by the caller's ``screen`` function, which is the review page's own:
:meth:`cxr_core.safety.screening.Screener.screen` of the default model (image checks plus its
out-of-distribution detector), or of ``Screener(None)`` (the image checks alone) when there is no
model. Films that do not look like a frontal chest X-ray are *flagged*; the administrator keeps or
drops each one. Files that cannot be decoded are *not readable*, with the decoder's message; they
never stop the others.

Only verdicts are kept (:class:`Screened`: the decision, the pixel hash, and a thumbnail for flagged
films), in a :class:`VerdictCache` keyed by file content, so a rerun decodes nothing new and a folder
of two thousand films is never held decoded at once. :func:`create_session` decodes the chosen files
again, one at a time, checks each is the film that was screened, and stores it.

Screening also looks for burned-in text (:func:`cxr_core.safety.redaction.text_boxes`: names, dates of
birth); such films are marked ``has_text`` and the administrator can have the text blacked out
(``redact``) before the film is stored: readers, galleries and exports then only ever get the redacted
pixels, stored under their own hash, and the audit trail records each redaction (see
:mod:`cxr_core.safety.redaction` for which hash identifies the film). Films are stored and logged under
their label ``film-<8 hex of the pixel hash>``, never their file name.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cxr_core.errors import CXRError
from cxr_core.io.imaging import XRay, load_xray
from cxr_core.safety.ood import OODDecision

#: Longest side of the thumbnail kept for a flagged film (shown so the administrator can decide).
THUMB_SIDE = 128
#: Verdicts one cache holds (no pixels but thumbnails of flagged films: a few MB at most).
CACHE_ENTRIES = 4096

ScreenFn = Callable[[XRay], OODDecision]


class IntakeError(CXRError):
    """The chosen films cannot make a session as asked (none left, or a file changed since screening)."""


@dataclass(frozen=True)
class IntakeFile:
    """One file offered for a session: an upload's bytes, or a file on the server.

    ``key`` identifies the content: the SHA-256 of an upload's bytes, or the path, size and
    modification time of a server file (so a folder is not read twice to be hashed).
    """

    name: str
    key: str
    label: str | None = None
    data: bytes | None = None
    path: Path | None = None

    @property
    def ident(self) -> str:
        """Unique within one intake (two uploads with the same content and different names are two files)."""
        return f"{self.key}|{self.name}"

    def decode(self) -> XRay:
        """The film, through :func:`cxr_core.io.imaging.load_xray` (raises its ``ImageError``)."""
        return load_xray(self.data if self.data is not None else self.path, self.name)


@dataclass(frozen=True, eq=False)
class Screened:
    """What screening said about one file; no pixels beyond a flagged film's thumbnail."""

    name: str
    ident: str
    label: str | None = None
    error: str = ""  # not readable: the decoder's message
    decision: OODDecision | None = None
    image_sha: str = ""  # pixel SHA-256, the stored image's identity
    size: tuple[int, int] | None = None  # (width, height)
    thumb: np.ndarray | None = None  # uint8, flagged films and films with burned-in text only
    text: tuple[tuple[int, int, int, int], ...] = ()  # burned-in text boxes (row0, col0, row1, col1)

    @property
    def readable(self) -> bool:
        return not self.error

    @property
    def film(self) -> str:
        """The film's label ``film-<8 hex>`` (what pages, the trail and exports call it); "" when not readable."""
        from cxr_core.io.film_facts import film_label

        return film_label(self.image_sha) if self.image_sha else ""

    @property
    def flagged(self) -> bool:
        """Readable, but does not look like a frontal chest X-ray."""
        return self.decision is not None and not self.decision.ok

    @property
    def has_text(self) -> bool:
        """Burned-in text was found (names, dates): the administrator may black it out before readers see it."""
        return bool(self.text)

    @property
    def verdict(self) -> str:
        if self.error:
            return "not readable"
        return "flagged: not a frontal chest X-ray" if self.flagged else "chest film"

    @property
    def reason(self) -> str:
        """The decoder's message, or the screening reasons joined by semicolons ("" for a chest film)."""
        return self.error or "; ".join(self.decision.reasons if self.decision else [])


class VerdictCache:
    """The last ``max_entries`` verdicts, by screener tag and file key (least recently used dropped)."""

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[str, str], Screened] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, tag: str, key: str) -> Screened | None:
        found = self._items.get((tag, key))
        if found is not None:
            self._items.move_to_end((tag, key))
        return found

    def put(self, tag: str, key: str, screened: Screened) -> None:
        self._items[(tag, key)] = screened
        self._items.move_to_end((tag, key))
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


# --- the files -------------------------------------------------------------------------------------


def from_uploads(files: Iterable[tuple[str, bytes]]) -> list[IntakeFile]:
    """``(name, content)`` pairs as intake files keyed by content; the same name and content twice is one file."""
    out: dict[str, IntakeFile] = {}
    for name, data in files:
        file = IntakeFile(name, hashlib.sha256(data).hexdigest(), data=data)
        out.setdefault(file.ident, file)
    return list(out.values())


def _server_file(path: Path, label: str | None = None) -> IntakeFile:
    try:
        st = path.stat()
        key = f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        key = f"file:{path}:missing"  # decoding says why it cannot be read
    return IntakeFile(path.name, key, label=label, path=path)


def from_folder(folder: str | Path, *, limit: int | None = None) -> list[IntakeFile]:
    """The image files directly in ``folder`` (see :func:`cxr_core.annotation.folder_files`), not yet read.

    Raises
    ------
    cxr_core.annotation.AnnotationInputError
        Not a folder, or more than ``limit`` image files.
    """
    from cxr_core.annotation import MAX_FOLDER_IMAGES, folder_files

    return [_server_file(p) for p in folder_files(folder, limit=limit or MAX_FOLDER_IMAGES)]


def from_samples(samples_dir: Path, files: Sequence[str] | None = None) -> tuple[list[IntakeFile], str]:
    """The bundled samples (all, or those in ``files``) with their labels; ``([], why)`` when there are none."""
    from cxr_core.io.samples import sample_entries

    entries, why = sample_entries(samples_dir, files)
    return [_server_file(samples_dir / str(e["file"]), e.get("label") or None) for e in entries], why


# --- screening -------------------------------------------------------------------------------------


def _thumb(pixels: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    import cv2

    h, w = pixels.shape
    scale = min(1.0, side / max(h, w))
    small = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return (np.clip(small, 0, 1) * 255).astype(np.uint8)


def screen_file(file: IntakeFile, screen: ScreenFn) -> Screened:
    """Decode ``file`` and screen it; a file that does not decode is not readable, with the decoder's message.

    A film the screener fails on is flagged with that failure as its reason: it is not passed unscreened.
    """
    try:
        xray = file.decode()
    except CXRError as err:
        return Screened(file.name, file.ident, file.label, error=str(err))
    try:
        decision = screen(xray)
    except CXRError as err:
        decision = OODDecision(False, [f"could not be screened ({err})"])
    from cxr_core.safety.redaction import text_boxes

    h, w = xray.shape
    text = text_boxes(xray.pixels)
    return Screened(file.name, file.ident, file.label, decision=decision, image_sha=xray.sha256, size=(w, h),
                    thumb=None if decision.ok and not text else _thumb(xray.pixels), text=text)


def screen_files(files: Sequence[IntakeFile], screen: ScreenFn, *, cache: VerdictCache | None = None,
                 tag: str = "", progress: Callable[[int, int, str], Any] | None = None) -> list[Screened]:
    """:func:`screen_file` of each file, in order; verdicts already in ``cache`` (same ``tag``) are reused.

    Parameters
    ----------
    files : sequence of IntakeFile
    screen : callable
        ``XRay -> OODDecision``: the review page's screening (see the module docstring).
    cache : VerdictCache, optional
        Verdicts by ``(tag, file.key)``; only one decoded film is held at a time.
    tag : str
        Which screener gave the verdicts (model name and checksum); another tag screens again.
    progress : callable, optional
        ``progress(done, todo, name)`` before each file that is not in the cache.
    """
    cache = cache if cache is not None else VerdictCache()
    todo = sum(cache.get(tag, f.key) is None for f in files)
    out, done = [], 0
    for file in files:
        found = cache.get(tag, file.key)
        if found is None:
            if progress is not None:
                progress(done, todo, file.name)
            found = screen_file(file, screen)
            cache.put(tag, file.key, found)
            done += 1
        out.append(replace(found, name=file.name, ident=file.ident, label=file.label))
    return out


# --- the session -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntakeResult:
    """The session made, and what was left out of it.

    Films are named by their label (``film-<8 hex>``); only files that could not be read, which have no
    film and are never stored, are named by their file name (for the administrator who chose them).
    """

    session: Any  # cxr_core.storage.AnnotationSession
    stored: int
    kept: list[str]  # labels of flagged films the administrator kept
    dropped: list[str]  # labels of flagged films left out
    unreadable: list[str]  # file names
    redacted: list[Any] = field(default_factory=list)  # cxr_core.safety.redaction.Redaction, one per film
    text_left: list[str] = field(default_factory=list)  # labels of films stored with their burned-in text, by choice

    def summary(self) -> str:
        """What was left out and what was kept against the screening, in a sentence or two ("" if nothing)."""
        parts = []
        if self.dropped:
            parts.append(f"Dropped {len(self.dropped)} film(s) flagged as not a frontal chest X-ray: "
                         + _names(self.dropped) + ".")
        if self.kept:
            parts.append(f"Kept {len(self.kept)} flagged film(s) by your choice: {_names(self.kept)}.")
        if self.unreadable:
            parts.append(f"Left out {len(self.unreadable)} file(s) that could not be read: "
                         + _names(self.unreadable) + ".")
        if self.redacted:
            parts.append(f"Blacked out burned-in text on {len(self.redacted)} film(s) before storing them.")
        if self.text_left:
            parts.append(f"Left the burned-in text on {len(self.text_left)} film(s) by your choice: "
                         + _names(self.text_left) + ".")
        return " ".join(parts)


def _names(names: Sequence[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def chosen(screened: Sequence[Screened], keep: Iterable[str] = ()) -> list[Screened]:
    """The films that go into the session: readable, and either not flagged or flagged and kept (by ``ident``)."""
    keep = set(keep)
    return [x for x in screened if x.readable and (not x.flagged or x.ident in keep)]


def _films(files: Sequence[IntakeFile], picked: Sequence[Screened], redact: set[str],
           redactions: list[Any]) -> Iterator[tuple[XRay, str | None]]:
    """Decode the picked files one at a time; each must be the film that was screened. Films whose ``ident``
    is in ``redact`` come out with their text blacked out (their :class:`Redaction` appended to ``redactions``)."""
    from cxr_core.safety.redaction import redact_xray

    by_ident = {f.ident: f for f in files}
    for x in picked:
        file = by_ident[x.ident]
        try:
            xray = file.decode()
        except CXRError as err:
            raise IntakeError(f"{file.name} can no longer be read ({err}); screen the files again") from err
        if xray.sha256 != x.image_sha:
            raise IntakeError(f"{file.name} has changed since it was screened; screen the files again")
        if x.ident in redact and x.text:
            xray, done = redact_xray(xray, x.text)
            redactions.append(done)
        yield xray, file.label


def create_session(
    s: Any,
    *,
    name: str,
    files: Sequence[IntakeFile],
    screened: Sequence[Screened],
    keep: Iterable[str] = (),
    reader_ids: Sequence[int],
    blind: bool = True,
    created_by: int | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    screened_by: str = "image checks",
    by: str | None = None,
    redact: Iterable[str] = (),
) -> IntakeResult:
    """Store the chosen films and create the session, in the caller's transaction.

    Chest films go in; a flagged film goes in only if its ``ident`` is in ``keep`` (logged as an
    expert override by :func:`cxr_core.safety.screening.override_record`, naming ``screened_by`` and ``by``);
    unreadable files never do. Each film is decoded again as it is stored, one at a time. Films with
    burned-in text whose ``ident`` is in ``redact`` are stored with the text blacked out (the screened boxes),
    under the redacted pixels' hash; each redaction is recorded in the audit trail (``session_change``, by ``by``).

    Raises
    ------
    IntakeError
        No film is left to store, or a file changed or vanished since it was screened.
    cxr_core.storage.StorageError
        A bad name or unknown readers.
    """
    from cxr_core.annotation import create_session_from_xrays
    from cxr_core.safety.screening import override_record

    keep, redact = set(keep), set(redact)
    picked = chosen(screened, keep)
    if not picked:
        raise IntakeError("no film left to put in the session: every file was flagged and dropped, or could not "
                          "be read; keep a flagged film or add chest films")
    redactions: list[Any] = []
    session = create_session_from_xrays(s, name=name, images=_films(files, picked, redact, redactions),
                                        reader_ids=reader_ids, blind=blind, created_by=created_by,
                                        shuffle=shuffle, seed=seed)
    from cxr_core.auth import record
    from cxr_core.storage import Redaction

    for done in redactions:
        if s.get(Redaction, done.redacted_sha) is None:  # the blind gate knows the original too
            s.add(Redaction(image_sha=done.redacted_sha, source_sha=done.original_sha))
        record(s, by, "session_change", film_sha=done.redacted_sha,
               detail=f"session {session.name!r}: {done.detail()}")
    left = [x for x in picked if x.text and x.ident not in redact]
    for x in left:  # the administrator saw the outlined text and chose to keep it: the trail says so, and where
        record(s, by, "session_change", film_sha=x.image_sha,
               detail=f"session {session.name!r}: burned-in text left on {x.film} by choice: {len(x.text)} box(es) "
                      f"{[list(b) for b in x.text]} not blacked out")
    kept = [x for x in picked if x.flagged]
    for x in kept:
        override_record(x.decision, model=screened_by, image=x.film,  # never the file name
                        where=f"sessions page, session {session.name!r}", by=by)
    return IntakeResult(
        session, len(picked), [x.film for x in kept],
        [x.film for x in screened if x.flagged and x.ident not in keep],
        [x.name for x in screened if not x.readable], redactions, [x.film for x in left],
    )


__all__ = ["IntakeError", "IntakeFile", "IntakeResult", "Screened", "VerdictCache", "chosen", "create_session",
           "from_folder", "from_samples", "from_uploads", "screen_file", "screen_files"]
