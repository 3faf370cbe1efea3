"""Settings read from the environment: where weights and data live, which database, limits."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_core.errors import CXRError

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """Paths, database URL and input limits.

    Read from the environment each time `get_settings()` is called, so a test or a deployment
    changes them with environment variables alone:

    - ``CXR_WEIGHTS_DIR``: the model registry folder (default ``<repo>/weights``).
    - ``CXR_DATA_DIR``: where the database file, drafts and samples live (default ``<repo>/data``); samples
      are read from ``CXR_DATA_DIR/samples`` when it holds a ``samples.json``, else the bundled ones.
    - ``CXR_DATABASE_URL``: any SQLAlchemy URL (default ``sqlite:///<data_dir>/annotations.db``).
    - ``CXR_IMPORT_ROOTS``: the only server folders the pages may read films or datasets from, separated by
      ``os.pathsep`` (default: none, so the pages take uploads only until an administrator sets it).
    - ``CXR_AUTH``: ``local`` (default: accounts in the database) or ``oidc`` (hospital single sign-on).
    - ``CXR_OIDC_ROLE_CLAIM``: the ID-token claim holding the user's groups or roles (default ``roles``;
      a dotted path such as ``realm_access.roles`` reaches into nested claims).
    - ``CXR_OIDC_ROLE_MAP``: which claim value gives which role, e.g. ``cxr-admins=admin,cxr-sme=sme``;
      a value not listed gives no role (deny by default).
    - ``CXR_OIDC_NAME_CLAIM``: the claim used as the user name (default ``email``).
    - ``CXR_IDLE_TIMEOUT_MIN``: minutes without activity before a logged-in user is logged out (default 30).
    """

    weights_dir: Path
    data_dir: Path
    database_url: str
    max_pixels: int = 50_000_000
    #: Working memory one decode may take (float64 samples, 8 bytes each): 400 MB, a 50-megapixel grey film.
    max_decode_bytes: int = 400_000_000
    min_side: int = 64
    auth: str = "local"
    oidc_role_claim: str = "roles"
    oidc_role_map: tuple[tuple[str, str], ...] = ()
    oidc_name_claim: str = "email"
    idle_timeout_min: int = 30
    #: Server folders (and everything under them) the sessions intake and the audit page may read.
    import_roots: tuple[Path, ...] = ()

    @property
    def samples_dir(self) -> Path:
        """``<data_dir>/samples`` when it holds a ``samples.json``, else the samples bundled with the code."""
        from cxr_core.io.samples import SAMPLES_JSON

        own = self.data_dir / "samples"
        return own if (own / SAMPLES_JSON).is_file() else REPO_ROOT / "data" / "samples"


def get_settings() -> Settings:
    """Current settings from the environment (cheap; no caching so tests can change them)."""
    weights = Path(os.environ.get("CXR_WEIGHTS_DIR", REPO_ROOT / "weights"))
    data = Path(os.environ.get("CXR_DATA_DIR", REPO_ROOT / "data"))
    url = os.environ.get("CXR_DATABASE_URL") or f"sqlite:///{data / 'annotations.db'}"
    roots = tuple(Path(r).expanduser() for r in os.environ.get("CXR_IMPORT_ROOTS", "").split(os.pathsep) if r.strip())
    return Settings(weights_dir=weights, data_dir=data, database_url=url, import_roots=roots,
                    **_auth_settings(os.environ))


class SettingsError(CXRError):
    """An environment variable holds a value CXR Review cannot use."""


AUTH_BACKENDS = ("local", "oidc")


def parse_role_map(text: str) -> tuple[tuple[str, str], ...]:
    """``"cxr-admins=admin, cxr-sme=sme"`` as ``(("cxr-admins", "admin"), ("cxr-sme", "sme"))``; roles checked."""
    from cxr_core.auth.roles import ROLES

    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        value, sep, role = (x.strip() for x in item.rpartition("="))
        if not sep or not value or role not in ROLES:
            raise SettingsError(f"CXR_OIDC_ROLE_MAP entry {item!r}; expected CLAIM_VALUE=ROLE with ROLE one of "
                                f"{', '.join(ROLES)}, entries separated by commas")
        pairs.append((value, role))
    return tuple(pairs)


def _auth_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The login settings (CXR_AUTH, CXR_OIDC_*, CXR_IDLE_TIMEOUT_MIN), checked."""
    auth = env.get("CXR_AUTH", "local").strip().lower() or "local"
    if auth not in AUTH_BACKENDS:
        raise SettingsError(f"CXR_AUTH={auth!r}; expected one of {', '.join(AUTH_BACKENDS)}")
    raw = env.get("CXR_IDLE_TIMEOUT_MIN", "30").strip() or "30"
    idle = int(raw) if raw.isdigit() else 0
    if idle < 1:
        raise SettingsError(f"CXR_IDLE_TIMEOUT_MIN={raw!r}; expected a whole number of minutes, 1 or more")
    return {
        "auth": auth,
        "oidc_role_claim": env.get("CXR_OIDC_ROLE_CLAIM", "").strip() or "roles",
        "oidc_role_map": parse_role_map(env.get("CXR_OIDC_ROLE_MAP", "")),
        "oidc_name_claim": env.get("CXR_OIDC_NAME_CLAIM", "").strip() or "email",
        "idle_timeout_min": idle,
    }
