"""Token-bucket rate limits per credential and per source address, in memory.

Hand-written because it is a dozen lines and an in-process limiter needs no library; a
multi-instance deployment would move this to the shared store (Redis) with the same interface.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

__all__ = ["RateLimiter"]


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    rate: float  # tokens per second
    burst: int  # bucket size
    max_keys: int = 100_000
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, key: str, now: float | None = None) -> float:
        """Takes one token; returns 0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def retry_after_header(self, wait: float) -> str:
        return str(max(1, math.ceil(wait)))

    def _prune(self, now: float) -> None:
        """Drops buckets that have refilled completely (they hold no information)."""
        full_after = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < full_after}
