"""Exponential backoff with full jitter, for reconnect loops.

With ``recent_maximum`` the ceiling stays that small for ``recent_window_s`` after the peer was
last reachable (the first failure after a :meth:`Backoff.reset`): a server that restarts is
back within seconds, and a reconnect loop that grew to tens of seconds while it was down
would find it only long after (issue 17: the relay paths after a server restart). A peer that
stays away longer is tried ever more rarely, up to ``maximum``, so a dead server is not
hammered.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    recent_maximum: float | None = None
    recent_window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _attempt: int = field(default=0, init=False)
    _lost_at: float | None = field(default=None, init=False)

    def next_delay(self) -> float:
        """The delay before the next attempt: uniform in [0, min(max, initial*factor**n)],
        with ``recent_maximum`` as the ceiling while the peer was reachable recently."""
        ceiling = min(self.maximum, self.initial * self.factor ** min(self._attempt, 64))
        if self.recent_maximum is not None:
            now = self.clock()
            if self._lost_at is None:
                self._lost_at = now
            if now - self._lost_at < self.recent_window_s:
                ceiling = min(ceiling, self.recent_maximum)
        self._attempt += 1
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret

    def reset(self) -> None:
        """The peer answered: the next failure starts from ``initial`` (and a new window)."""
        self._attempt = 0
        self._lost_at = None
