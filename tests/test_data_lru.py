"""The generic thread-safe LRU of loaded files (ctlib.data.lru)."""

from __future__ import annotations

import threading
from pathlib import Path

from ctlib.data import lru


def _counting_loader() -> tuple[list[str], lru.LoadingLRU[str]]:
    calls: list[str] = []

    def load(path: str) -> str:
        calls.append(path)
        return path.upper()

    return calls, lru.LoadingLRU(load, size=2)


def test_hits_return_the_stored_item_without_loading():
    calls, store = _counting_loader()
    assert store.get("a") == "A"
    assert store.get(Path("a")) == "A"  # os.PathLike keys are the same key as their string
    assert calls == ["a"] and store.loads == 1


def test_evicts_the_least_recently_used_item():
    calls, store = _counting_loader()
    store.get("a")
    store.get("b")
    store.get("a")  # "b" is now the oldest
    store.get("c")
    assert len(store) == 2 and "a" in store and "c" in store and "b" not in store
    store.get("b")
    assert calls == ["a", "b", "c", "b"] and store.loads == 4


def test_size_is_at_least_one():
    calls, _ = _counting_loader()
    store = lru.LoadingLRU(str.upper, size=0)
    store.get("a")
    store.get("a")
    assert store.size == 1 and store.loads == 1 and len(store) == 1
    assert lru.LoadingLRU(str.upper).size == 4  # the default


def test_concurrent_gets_keep_the_bound():
    _, store = _counting_loader()
    paths = [f"p{i % 5}" for i in range(200)]

    def worker(offset: int) -> None:
        for p in paths[offset:] + paths[:offset]:
            assert store.get(p) == p.upper()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) <= 2
