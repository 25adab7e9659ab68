"""Log lines a peer can provoke, at most a few per interval each (the rest counted, then told).

An authenticated node that sends a malformed message per millisecond must not turn the
server's log into its megaphone (disk, log shipping, and the operator's attention). Counting
is what metrics are for; the log keeps the first few of each kind per interval and then one
line that says how many more there were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RateLimitedLog"]

INTERVAL_S = 10.0
BURST = 5
MAX_KEYS = 1024  # kinds of line remembered at once; beyond, the oldest window is dropped


class RateLimitedLog:
    """``log(key, level, msg, ...)``: the first :data:`BURST` lines of ``key`` per
    :data:`INTERVAL_S` go through; the next line after the window says how many were held."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = INTERVAL_S,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval_s
        self._burst = burst
        self._clock = clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (start, sent, held)

    def log(
        self,
        key: str,
        level: int,
        msg: str,
        *args: object,
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """Logs unless ``key`` is over its burst; returns whether it logged."""
        now = self._clock()
        start, sent, held = self._windows.get(key, (now, 0, 0))
        if now - start >= self._interval:
            if held:
                self._log.log(
                    level,
                    "%d more like this in the last %.0f s were not logged: %s",
                    held,
                    now - start,
                    key,
                    extra={"suppressed": held, "kind": key},
                )
            start, sent, held = now, 0, 0
        if sent >= self._burst:
            self._windows[key] = (start, sent, held + 1)
            return False
        if key not in self._windows and len(self._windows) >= MAX_KEYS:
            del self._windows[next(iter(self._windows))]
        self._windows[key] = (start, sent + 1, held)
        self._log.log(level, msg, *args, extra=dict(extra or {}))
        return True
