"""The bundled sample films: where they live and what ``samples.json`` lists about each.

``samples.json`` is a list of ``{"file", "label", "source", "license", "attribution"}`` entries
next to the films. The folder is :attr:`cxr_core.config.Settings.samples_dir`: ``CXR_DATA_DIR/samples``
when that holds a ``samples.json``, else the samples that ship with the code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

#: The list of samples in a samples folder.
SAMPLES_JSON = "samples.json"


def samples_dir() -> Path:
    """The samples folder of the current settings (see the module docstring)."""
    from cxr_core.config import get_settings

    return get_settings().samples_dir


def _read(folder: Path) -> list[dict]:
    try:
        entries = json.loads((folder / SAMPLES_JSON).read_text())
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict) and e.get("file")] if isinstance(entries, list) else []


def list_samples(folder: Path | None = None) -> list[dict]:
    """The entries of ``folder/samples.json`` (default :func:`samples_dir`) whose film is there; [] if none."""
    folder = samples_dir() if folder is None else Path(folder)
    return [e for e in _read(folder) if (folder / str(e["file"])).is_file()]


def sample_entries(folder: Path, files: Sequence[str] | None = None) -> tuple[list[dict], str]:
    """The entries of ``folder/samples.json`` (all, or those named in ``files``), or ``[]`` and why none."""
    entries = _read(Path(folder))
    if not entries:
        return [], f"no bundled samples are installed ({Path(folder) / SAMPLES_JSON})"
    if files is not None:
        entries = [e for e in entries if e["file"] in set(files)]
        if not entries:
            return [], "no sample chosen"
    return entries, ""


__all__ = ["SAMPLES_JSON", "list_samples", "sample_entries", "samples_dir"]
