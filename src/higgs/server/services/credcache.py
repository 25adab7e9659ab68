"""Credential hash → principal, kept in memory for a few seconds.

Every API request authenticates; without a cache each one costs a database round trip (a
thread hand-off on SQLite). Entries are keyed by the token's SHA-256 (what the database
stores), never by the token. Only successful lookups are cached, so a guessed token costs a
lookup every time and cannot fill the cache.

Invalidation is explicit for changes made by this process (revoking a client, re-registering a
node): :meth:`CredentialCache.drop_where` removes the entries and bumps an epoch, and a lookup
that started before the bump may not store its (now stale) answer — so the change holds from
the next request on. Changes made by another process (``bosonserver client revoke`` on the
database) take effect when the entry expires, after at most ``ttl_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["CredentialCache"]

V = TypeVar("V")


class CredentialCache(Generic[V]):
    def __init__(
        self,
        ttl_s: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, V]] = {}
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """Read before a database lookup and hand to :meth:`put` with its answer."""
        return self._epoch

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        return value

    def put(self, key: str, value: V, epoch: int) -> None:
        """Stores ``value`` unless an invalidation happened since ``epoch`` was read."""
        if self.ttl_s <= 0 or epoch != self._epoch:
            return
        now = self._clock()
        if len(self._entries) >= self.max_entries:
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[key] = (now + self.ttl_s, value)

    def drop_where(self, predicate: Callable[[V], bool]) -> None:
        self._epoch += 1
        self._entries = {k: e for k, e in self._entries.items() if not predicate(e[1])}

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
