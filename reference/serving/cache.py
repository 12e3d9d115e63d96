"""A least-recently-used cache of loaded models keyed by version: a hit refreshes the entry,
a miss loads it and, when full, evicts the entry used longest ago (handing it to
`on_evict`, so a server can drain that model's queue before dropping it)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    def __init__(self, capacity: int, load: Callable[[K], V],
                 on_evict: Callable[[K, V], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._load = load
        self._on_evict = on_evict
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: K) -> V:
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        value = self._load(key)  # a failed load leaves the cache as it was
        self._entries[key] = value
        if len(self._entries) > self.capacity:
            old_key, old_value = self._entries.popitem(last=False)
            self.evictions += 1
            if self._on_evict is not None:
                self._on_evict(old_key, old_value)
        return value

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        return list(self._entries)

    def values(self) -> list[V]:
        return list(self._entries.values())

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
