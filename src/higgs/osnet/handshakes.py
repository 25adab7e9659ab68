"""WireGuard's handshake times, made safe against a wall clock that steps.

``wg show dump`` reports each peer's latest handshake as the *wall-clock* time it happened.
Every age we derive from it (the node's ``last_handshake_s`` in its heartbeats, the client's
"no handshake for 200 s, take a new route") is ``now - that``: when the host's clock steps --
NTP correcting a PC that was 5 minutes off, a laptop resuming with a drifted RTC -- a handshake
taken before the step looks 5 minutes old (+5 min: a healthy path is left) or from the future
(-5 min: clamped to 0, a dead path looks fresh for 5 minutes). So the age of a handshake is
kept on the monotonic clock from the moment we first see it, and the wall value we hand on is
``now - age`` on the wall clock of the moment we read it: consumers keep computing
``time.time() - latest_handshake`` and get the right age whatever the wall clock did.

A handshake we see for the first time can be at most as old as our previous read of the
interface (it was not there then), so only the very first read after start-up takes the wall
clock's word for a handshake's age.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["HandshakeClock"]


class HandshakeClock:
    """Re-bases the handshake times of successive reads of one interface (see module doc)."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall, self._mono = wall, mono
        self._seen: dict[str, tuple[int, float]] = {}  # key -> (wg's value, monotonic time)
        self._last_read: float | None = None
        self._lock = threading.Lock()  # reads come from worker threads (asyncio.to_thread)

    def rebase(self, handshakes: Iterable[tuple[str, int | None]]) -> dict[str, float | None]:
        """``(public key, wg's latest handshake or None)`` of one read → each key's handshake
        time on our wall clock now (None: never)."""
        with self._lock:
            wall, mono = self._wall(), self._mono()
            bound = float("inf") if self._last_read is None else mono - self._last_read
            seen: dict[str, tuple[int, float]] = {}
            out: dict[str, float | None] = {}
            for key, value in handshakes:
                if not value:
                    out[key] = None
                    continue
                known = self._seen.get(key)
                if known is not None and known[0] == value:
                    at = known[1]
                else:
                    # New since the previous read: not older than that read, whatever the
                    # wall clocks say; never in the future.
                    at = mono - min(max(0.0, wall - value), bound)
                seen[key] = (value, at)
                out[key] = wall - (mono - at)
            self._seen, self._last_read = seen, mono
            return out
