"""A thread-safe least-recently-used store of loaded files, for datasets whose DataLoader workers read
the same few volumes many times: memory holds ``size`` items whatever the number of files."""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LoadingLRU(Generic[T]):
    """Least-recently-used store of ``load(path)`` results keyed by path; thread-safe.

    ``get`` loads outside the lock, so two threads missing the same path may both load it (the later
    one wins); ``loads`` counts the loads actually made.
    """

    def __init__(self, load: Callable[[str], T], size: int = 4) -> None:
        self.load = load
        self.size = max(1, int(size))
        self._items: collections.OrderedDict[str, T] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, path: str | os.PathLike) -> T:
        """The item of ``path``: from the store (now the most recent), else loaded, evicting the oldest."""
        key = os.fspath(path)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        item = self.load(key)
        with self._lock:
            self.loads += 1
            self._items[key] = item
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return item

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str | os.PathLike) and os.fspath(path) in self._items
