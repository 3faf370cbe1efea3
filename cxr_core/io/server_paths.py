"""Server folders the pages may read: only under the configured roots (``CXR_IMPORT_ROOTS``).

A page that takes a path typed in a browser (the sessions intake, the dataset audit) reads the
server's disk with the server's rights. So it reads only under folders an administrator listed in
``CXR_IMPORT_ROOTS``; anything else is refused before the path is opened, with a message that
names the roots and never what a file holds. Links are resolved first, so a link inside a root
that points out of it is refused too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from cxr_core.config import get_settings
from cxr_core.errors import CXRError, DataError, UnsupportedFormatError


class PathNotAllowed(CXRError):
    """A server path outside every configured import root (or no root configured)."""


def _roots(roots: Sequence[Path] | None) -> tuple[Path, ...]:
    found = get_settings().import_roots if roots is None else tuple(roots)
    return tuple(Path(r).expanduser().resolve() for r in found)


def roots_text(roots: Sequence[Path] | None = None) -> str:
    """The configured roots in words, for a page's help text."""
    found = _roots(roots)
    if not found:
        return "no server folder is configured (CXR_IMPORT_ROOTS is not set), so server folders cannot be read"
    return "server folders under " + ", ".join(str(r) for r in found)


def allowed_path(path: str | Path, roots: Sequence[Path] | None = None) -> Path:
    """``path`` resolved (links followed), when it lies inside one of ``roots`` (default: the settings').

    Raises
    ------
    PathNotAllowed
        No root configured, or the resolved path lies outside every root.
    """
    found = _roots(roots)
    text = str(path).strip()
    if not found:
        raise PathNotAllowed(
            "reading folders on the server is switched off: no import root is configured. An administrator lists "
            f"the folders that may be read in CXR_IMPORT_ROOTS (separated by {os.pathsep!r}) and restarts the app; "
            "until then, upload the files instead")
    if not text:
        raise PathNotAllowed("no server path given")
    resolved = Path(text).expanduser().resolve()
    if not any(resolved == r or resolved.is_relative_to(r) for r in found):
        raise PathNotAllowed(f"{text!r} is outside the folders this server may read ({', '.join(map(str, found))}); "
                             "copy the files under one of them, or ask an administrator to add a root to "
                             "CXR_IMPORT_ROOTS")
    return resolved


def check_all(paths: Iterable[str | Path], roots: Sequence[Path] | None = None) -> None:
    """:func:`allowed_path` for each path (e.g. the files a manifest names): one outside a root refuses all."""
    for p in paths:
        allowed_path(p, roots)


def unreadable_reason(err: CXRError) -> str:
    """An error about a server file in words that never quote what the file holds.

    The decoder names a file it cannot read by its first bytes, and a manifest reader quotes the
    columns and labels it found: fine for one's own upload, not for any file on the server.
    """
    if isinstance(err, UnsupportedFormatError):
        return "not an image CXR Review can read (PNG, JPEG, TIFF or DICOM)"
    if isinstance(err, DataError):
        return ("not a dataset CXR Review can read: expected a manifest CSV with file and label columns, a folder "
                "with manifest.csv, class folders, or a folder of images")
    return str(err)


_QUOTED_BYTES = re.compile(r"\s*\(starts with b?(['\"]).*?\1\)")


def without_contents(message: str) -> str:
    """A decoder's message with the quoted first bytes of the file taken out (``(starts with b'...')``)."""
    return _QUOTED_BYTES.sub("", str(message))


__all__ = ["PathNotAllowed", "allowed_path", "check_all", "roots_text", "unreadable_reason", "without_contents"]
