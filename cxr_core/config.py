"""Settings read from the environment: where weights and data live, which database, limits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """Paths, database URL and input limits.

    Read from the environment each time `get_settings()` is called, so a test or a deployment
    changes them with environment variables alone:

    - ``CXR_WEIGHTS_DIR``: the model registry folder (default ``<repo>/weights``).
    - ``CXR_DATA_DIR``: where the database file, drafts and samples live (default ``<repo>/data``).
    - ``CXR_DATABASE_URL``: any SQLAlchemy URL (default ``sqlite:///<data_dir>/annotations.db``).
    - ``CXR_IMPORT_ROOTS``: the only server folders the pages may read films or datasets from, separated by
      ``os.pathsep`` (default: none, so the pages take uploads only until an administrator sets it).
    """

    weights_dir: Path
    data_dir: Path
    database_url: str
    max_pixels: int = 50_000_000
    #: Working memory one decode may take (float64 samples, 8 bytes each): 400 MB, a 50-megapixel grey film.
    max_decode_bytes: int = 400_000_000
    min_side: int = 64
    #: Server folders (and everything under them) the sessions intake and the audit page may read.
    import_roots: tuple[Path, ...] = ()

    @property
    def samples_dir(self) -> Path:
        return REPO_ROOT / "data" / "samples"


def get_settings() -> Settings:
    """Current settings from the environment (cheap; no caching so tests can change them)."""
    weights = Path(os.environ.get("CXR_WEIGHTS_DIR", REPO_ROOT / "weights"))
    data = Path(os.environ.get("CXR_DATA_DIR", REPO_ROOT / "data"))
    url = os.environ.get("CXR_DATABASE_URL") or f"sqlite:///{data / 'annotations.db'}"
    roots = tuple(Path(r).expanduser() for r in os.environ.get("CXR_IMPORT_ROOTS", "").split(os.pathsep) if r.strip())
    return Settings(weights_dir=weights, data_dir=data, database_url=url, import_roots=roots)
