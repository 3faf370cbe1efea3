"""cxr_core.cache: a least-recently-used cache bounded in bytes (issue 15)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from cxr_core.cache import DEFAULT_CACHE_MB, ByteLRU, budget_from_env, freeze, nbytes_of
from cxr_core.config import SettingsError


def block(kb: int) -> np.ndarray:
    return np.zeros(kb * 256, np.float32)  # kb kilobytes


def test_eviction_is_by_bytes_least_recently_used_first():
    cache = ByteLRU(budget_bytes=10 * 1024)
    for key in "abc":
        assert cache.put(key, block(3))
    assert cache.nbytes == 9 * 1024 and len(cache) == 3
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("d", block(3))  # 12 kB > 10 kB: the least recently used ("b") goes
    assert [k for k in "abcd" if k in cache] == ["a", "c", "d"]
    cache.put("e", block(7))  # needs 7 kB: "c" and "a" go, "d" (3 kB) stays
    assert [k for k in "abcde" if k in cache] == ["d", "e"]
    assert cache.nbytes == 10 * 1024 <= cache.budget_bytes
    assert cache.stats().evictions == 3


def test_many_small_values_fit_where_a_count_limit_would_thrash():
    cache = ByteLRU(budget_bytes=40 * 64 * 1024)
    for i in range(40):  # forty 64 kB films: all kept, whatever their number
        cache.put(i, block(64))
    assert len(cache) == 40 and all(cache.get(i) is not None for i in range(40))
    assert cache.stats().hits == 40 and cache.stats().misses == 0


def test_a_value_larger_than_the_budget_is_returned_but_not_kept():
    cache = ByteLRU(budget_bytes=4 * 1024)
    cache.put("small", block(1))
    made = cache.get_or_make("huge", lambda: block(8))
    assert made.nbytes == 8 * 1024 and "huge" not in cache and "small" in cache
    assert not cache.put("huge", block(8)) and cache.nbytes == 1024
    off = ByteLRU(budget_bytes=0)  # CXR_CACHE_MB=0: caching off
    off.get_or_make("x", lambda: block(1))
    assert len(off) == 0 and off.nbytes == 0


def test_replacing_a_key_counts_its_new_size_only():
    cache = ByteLRU(budget_bytes=10 * 1024)
    cache.put("a", block(6))
    cache.put("a", block(2))
    assert cache.nbytes == 2 * 1024 and len(cache) == 1
    cache.discard("a")
    assert cache.nbytes == 0 and "a" not in cache


def test_hits_misses_and_get_or_make_compute_once():
    cache = ByteLRU(budget_bytes=1024 * 1024)
    calls = []
    for _ in range(3):
        value = cache.get_or_make(("film", "sha"), lambda: calls.append(1) or block(4))
    assert len(calls) == 1 and value.nbytes == 4096
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.nbytes) == (2, 1, 1, 4096)
    assert cache.get("missing", "default") == "default" and cache.stats().misses == 2


def test_an_exception_from_make_is_raised_and_nothing_is_kept():
    cache = ByteLRU(budget_bytes=1024)

    def fail():
        raise ValueError("cannot decode")

    with pytest.raises(ValueError, match="cannot decode"):
        cache.get_or_make("bad", fail)
    assert "bad" not in cache and cache.get_or_make("bad", lambda: 7) == 7


def test_threads_asking_for_one_missing_key_make_it_once():
    cache = ByteLRU(budget_bytes=1024 * 1024)
    calls, results = [], []
    start = threading.Barrier(8)

    def make():
        calls.append(1)
        time.sleep(0.05)  # long enough for every thread to ask while it is being made
        return block(1)

    def worker():
        start.wait()
        results.append(cache.get_or_make("film", make))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 8 and all(r is results[0] for r in results)


def test_concurrent_puts_never_exceed_the_budget():
    budget = 50 * 1024
    cache = ByteLRU(budget_bytes=budget)
    seen = []

    def worker(w: int):
        for i in range(200):
            cache.put((w, i), block(1 + (i % 7)))
            seen.append(cache.nbytes)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(seen) <= budget
    assert cache.nbytes == sum(nbytes_of(cache.get(k)) for k in list(cache._items))


def test_nbytes_of_sums_arrays_bytes_and_records_once():
    @dataclass(frozen=True)
    class Record:
        pixels: np.ndarray
        thumb: np.ndarray
        png: bytes
        name: str = "film"

    a = np.zeros((100, 100), np.float32)
    rec = Record(a, a, b"x" * 1000)  # the same array twice is counted once
    assert 40_000 + 1000 <= nbytes_of(rec) < 40_000 + 1000 + 1024
    assert nbytes_of({"k": (np.zeros(10, np.uint8), [np.zeros(5, np.float64)])}) >= 10 + 40


def test_freeze_makes_shared_arrays_read_only():
    @dataclass(frozen=True)
    class Record:
        heat: np.ndarray
        parts: tuple

    rec = freeze(Record(np.zeros(4), (np.ones(2),)))
    with pytest.raises(ValueError, match="read-only"):
        rec.heat[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        rec.parts[0][0] = 1


def test_budget_from_env():
    assert budget_from_env({}) == DEFAULT_CACHE_MB * 2**20
    assert budget_from_env({"CXR_CACHE_MB": " 64 "}) == 64 * 2**20
    assert budget_from_env({"CXR_CACHE_MB": "0"}) == 0
    for bad in ("-1", "lots", "1.5"):
        with pytest.raises(SettingsError, match="CXR_CACHE_MB"):
            budget_from_env({"CXR_CACHE_MB": bad})
    with pytest.raises(ValueError, match="budget_bytes"):
        ByteLRU(-1)
