"""A least-recently-used cache bounded in bytes, not in entries: decoded films, heatmaps and pictures vary in size.

A film of 3000 x 2500 pixels weighs 30 MB as float32, a thumbnail 25 kB: counting entries either thrashes (the
review page's 16 films, issue 15) or lets memory grow without bound. :class:`ByteLRU` keeps the most recently
used values whose total size (:func:`nbytes_of`: numpy buffers, bytes and strings, summed through dataclasses
and containers) stays within a budget, ``CXR_CACHE_MB`` megabytes by default (:func:`budget_from_env`).

It is thread-safe (one server serves many browser sessions at once), and :meth:`ByteLRU.get_or_make` computes a
missing value once even when several threads ask for it together. Values are shared between callers: store
read-only data (:func:`freeze` marks numpy arrays read-only) and never change a value taken from the cache.

Examples
--------
>>> cache = ByteLRU(budget_bytes=1000)
>>> a = cache.get_or_make("a", lambda: np.zeros(100, np.float32))   # 400 bytes
>>> b = cache.get_or_make("b", lambda: np.zeros(100, np.float32))
>>> c = cache.get_or_make("c", lambda: np.zeros(100, np.float32))   # 1200 bytes > 1000: "a" goes
>>> "a" in cache, cache.nbytes
(False, 800)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from cxr_core.config import SettingsError

V = TypeVar("V")

#: Budget when ``CXR_CACHE_MB`` is not set.
DEFAULT_CACHE_MB = 512
_SMALL = 64  # bytes counted for an object with no buffer of its own (a number, None, a small record)


def budget_from_env(env: Mapping[str, str] | None = None) -> int:
    """``CXR_CACHE_MB`` (default :data:`DEFAULT_CACHE_MB`) in bytes.

    Raises
    ------
    SettingsError
        The value is not a whole number of megabytes >= 0.
    """
    env = os.environ if env is None else env
    raw = env.get("CXR_CACHE_MB", "").strip()
    if not raw:
        return DEFAULT_CACHE_MB * 2**20
    try:
        mb = int(raw)
    except ValueError:
        mb = -1
    if mb < 0:
        raise SettingsError(f"CXR_CACHE_MB={raw!r}; expected a whole number of megabytes (0 turns caching off)")
    return mb * 2**20


def nbytes_of(value: Any, _seen: set[int] | None = None) -> int:
    """Bytes held by ``value``: numpy ``nbytes``, ``len`` of bytes and strings, summed through dataclasses,
    tuples, lists, sets and dicts (each object once); :data:`_SMALL` for anything else."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return int(value.nbytes) if value.base is None or id(value.base) not in seen else 0
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, str):
        return sys.getsizeof(value)
    if isinstance(value, (tuple, list, set, frozenset)):
        return _SMALL + sum(nbytes_of(v, seen) for v in value)
    if isinstance(value, dict):
        return _SMALL + sum(nbytes_of(k, seen) + nbytes_of(v, seen) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _SMALL + sum(nbytes_of(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    return _SMALL


def freeze(value: V) -> V:
    """Mark every numpy array in ``value`` (through dataclasses and containers) read-only; ``value`` back.

    A cached value is shared by every browser session: a caller that tried to change it in place would fail
    loudly instead of silently changing another reader's picture.
    """
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, (tuple, list, set, frozenset)):
        for v in value:
            freeze(v)
    elif isinstance(value, dict):
        for v in value.values():
            freeze(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            freeze(getattr(value, f.name))
    return value


@dataclass(frozen=True)
class CacheStats:
    """What a :class:`ByteLRU` holds and how it has been used since it was made (or cleared)."""

    entries: int
    nbytes: int
    budget_bytes: int
    hits: int
    misses: int
    evictions: int


class ByteLRU(Generic[V]):
    """Least-recently-used values whose total :func:`nbytes_of` stays within ``budget_bytes``.

    Parameters
    ----------
    budget_bytes : int
        Most bytes held at once. A value larger than the whole budget is returned but not kept; 0 keeps nothing.
    sizeof : callable, optional
        Bytes of a value (default :func:`nbytes_of`).
    """

    def __init__(self, budget_bytes: int, *, sizeof: Callable[[Any], int] = nbytes_of):
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0; got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self._sizeof = sizeof
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._making: dict[Hashable, threading.Lock] = {}
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        """The value under ``key`` (now the most recently used), or ``default``; counts a hit or a miss."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return default
            self._items.move_to_end(key)
            self.hits += 1
            return found[0]

    def put(self, key: Hashable, value: V) -> bool:
        """Keep ``value`` under ``key``, evicting the least recently used until it fits; False when it is larger
        than the whole budget (then it is not kept, and an older value under ``key`` is dropped)."""
        size = int(self._sizeof(value))
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            if size > self.budget_bytes:
                return False
            while self._items and self.nbytes + size > self.budget_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.nbytes -= dropped
                self.evictions += 1
            self._items[key] = (value, size)
            self.nbytes += size
            return True

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        """The cached value under ``key``, or ``make()`` kept under it. Threads asking for the same missing key
        together wait for one ``make()``; an exception from ``make`` is raised to the caller and nothing is kept."""
        sentinel = _MISSING
        found = self.get(key, sentinel)
        if found is not sentinel:
            return found
        with self._lock:
            lock = self._making.setdefault(key, threading.Lock())
        with lock:
            with self._lock:  # another thread may have made it while this one waited
                ready = self._items.get(key)
                if ready is not None:
                    self._items.move_to_end(key)
                    return ready[0]
            try:
                value = make()
                self.put(key, value)
                return value
            finally:
                with self._lock:
                    if self._making.get(key) is lock:
                        del self._making[key]

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` (nothing happens when it is not there)."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]

    def clear(self) -> None:
        """Forget every value and reset the counters."""
        with self._lock:
            self._items.clear()
            self.nbytes = self.hits = self.misses = self.evictions = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._items), self.nbytes, self.budget_bytes, self.hits, self.misses,
                              self.evictions)


_MISSING: Any = object()

__all__ = ["DEFAULT_CACHE_MB", "ByteLRU", "CacheStats", "budget_from_env", "freeze", "nbytes_of"]
