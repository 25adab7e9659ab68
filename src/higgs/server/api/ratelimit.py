"""Token-bucket rate limits per credential and per source address, in memory.

Hand-written because it is a dozen lines and an in-process limiter needs no library. Behind a
round-robin balancer, N instances each see 1/N of a credential's requests, so a scale-out
instance sets :attr:`RateLimiter.share` to the number of live instances and grants 1/N of the
rate and burst: the sum over instances is the configured limit with no shared write per
request (docs/scaleout.md).
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
    share: int = 1  # live instances sharing the limit (1 when embedded)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, key: str, now: float | None = None) -> float:
        """Takes one token; returns 0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        rate = self.rate / self.share
        burst = max(1.0, self.burst / self.share)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def retry_after_header(self, wait: float) -> str:
        return str(max(1, math.ceil(wait)))

    def _prune(self, now: float) -> None:
        """Drops buckets that have refilled completely (they hold no information)."""
        full_after = self.burst / self.rate  # the same time for any share
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < full_after}
