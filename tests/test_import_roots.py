"""Server folders only under CXR_IMPORT_ROOTS: inside is read, outside (links included) is refused in words."""

from __future__ import annotations

import os

import pytest

from cxr_core.config import get_settings
from cxr_core.errors import DataError, UnsupportedFormatError
from cxr_core.io import server_paths
from cxr_core.io.imaging import load_xray
from cxr_core.io.server_paths import PathNotAllowed, allowed_path, unreadable_reason


def test_roots_come_from_the_environment(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("CXR_IMPORT_ROOTS", f"{a}{os.pathsep}{b}")
    assert get_settings().import_roots == (a, b)
    monkeypatch.delenv("CXR_IMPORT_ROOTS")
    assert get_settings().import_roots == ()


def test_no_root_configured_refuses_every_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_IMPORT_ROOTS", raising=False)
    with pytest.raises(PathNotAllowed, match="no import root is configured.*CXR_IMPORT_ROOTS"):
        allowed_path(tmp_path)
    assert "not set" in server_paths.roots_text()


def test_inside_a_root_is_allowed_outside_and_escapes_are_refused(tmp_path, monkeypatch):
    root = tmp_path / "studies"
    (root / "batch1").mkdir(parents=True)
    outside = tmp_path / "private"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    monkeypatch.setenv("CXR_IMPORT_ROOTS", str(root))
    assert allowed_path(str(root / "batch1")) == (root / "batch1").resolve()
    assert allowed_path(root) == root.resolve()
    for bad in (outside, root / "batch1" / ".." / ".." / "private", root / "escape", "/etc"):
        with pytest.raises(PathNotAllowed, match="outside the folders this server may read"):
            allowed_path(bad)
    with pytest.raises(PathNotAllowed, match="outside"):
        server_paths.check_all([root / "batch1" / "x.png", outside / "y.png"])
    # a sibling whose name starts like the root is not inside it
    (tmp_path / "studies-other").mkdir()
    with pytest.raises(PathNotAllowed):
        allowed_path(tmp_path / "studies-other")


def test_unreadable_reasons_never_quote_the_file():
    secret = b"PATIENT:" + b"Jane Doe 1970-01-01"
    with pytest.raises(UnsupportedFormatError) as info:
        load_xray(secret, "notes.png")
    assert "PATIENT" in str(info.value)  # the decoder quotes the first bytes of an upload...
    assert "PATIENT" not in unreadable_reason(info.value)  # ...a server file's reason never does
    assert "PNG, JPEG, TIFF or DICOM" in unreadable_reason(info.value)
    leaked = DataError("manifest /x.csv lacks column(s) ['file']; it has ['Jane Doe', '1970-01-01']")
    assert "Jane" not in unreadable_reason(leaked) and "manifest CSV" in unreadable_reason(leaked)


def test_a_decoders_message_loses_the_quoted_bytes():
    with pytest.raises(UnsupportedFormatError) as info:
        load_xray(b"PATIENT: Jane Doe", "notes.png")
    assert server_paths.without_contents(str(info.value)) == (
        "not an image CXR Review can read; expected PNG, JPEG, TIFF or DICOM")
