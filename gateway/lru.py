"""Bounded per-process caches: a gateway process that sees thousands of tenants and tens of
thousands of keys keeps at most a set number of entries of each kind, not one per key forever.

Every cache of the hot path that is keyed by something callers choose (a key, a tenant, a key id)
is one of these, sized by a setting (GATEWAY_KEY_CACHE_SIZE, GATEWAY_TENANT_CACHE_SIZE;
docs/scaling.md). The size is read at each insertion, so a test or an operator's override takes
effect without a restart. Dropping an entry is always harmless: its next use reads the database
(or writes a timestamp once more), which is what an expired entry costs anyway.
"""

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class LRU:
    """A dict of at most `size()` entries; reading or writing an entry makes it the newest, and
    an insertion past the bound drops the least recently used. Single-threaded use (the event
    loop): no lock."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: Callable[[], int]) -> None:
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._size = size

    def get(self, key: Hashable, default: Any = None) -> Any:
        try:
            value = self._entries[key]
        except KeyError:
            return default
        self._entries.move_to_end(key)
        return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        bound = max(1, self._size())
        while len(self._entries) > bound:
            self._entries.popitem(last=False)

    def pop(self, key: Hashable, default: Any = None) -> Any:
        return self._entries.pop(key, default)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries
