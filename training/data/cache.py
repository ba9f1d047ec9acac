"""A small least-recently-used cache for renders and decoded frames."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LruCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """Keep the ``maxsize`` values used last; plain data, so it pickles to DataLoader workers.

    Parameters
    ----------
    maxsize : int
        Entries kept, >= 0 (0 caches nothing).
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"cache size {maxsize!r} is negative")
        self.maxsize = maxsize
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, make: Callable[[K], V]) -> V:
        """The value for ``key``, made with ``make(key)`` when not cached."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make(key)
        if self.maxsize:
            self._items[key] = value
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value
