"""The idle timeout: a logged-in user who does nothing for ``CXR_IDLE_TIMEOUT_MIN`` minutes is logged out."""

from __future__ import annotations


def idle_timeout_s() -> int:
    """The idle timeout in seconds, from the settings (``CXR_IDLE_TIMEOUT_MIN``, default 30 minutes)."""
    from cxr_core.config import get_settings

    return get_settings().idle_timeout_min * 60


def idle_expired(last_seen: float | None, now: float, timeout_s: float | None = None) -> bool:
    """Whether more than the idle timeout has passed since ``last_seen`` (``time.time()`` values).

    ``None`` (never seen) counts as expired; ``timeout_s`` defaults to :func:`idle_timeout_s`.
    """
    if last_seen is None:
        return True
    limit = idle_timeout_s() if timeout_s is None else timeout_s
    return now - float(last_seen) > limit
