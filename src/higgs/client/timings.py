"""Where a connect's time goes: a recorder of named phases (issue 13, item 5).

Pure: a clock is handed in (``time.monotonic`` by default), nothing else is touched but the
log. The connect flow wraps each step in :meth:`PhaseTimer.phase`; ``higgsvpn connect --json``
prints :meth:`PhaseTimer.as_dict` as its ``timings`` object (docs/client.md lists the names).

A phase that runs more than once (a second path's peer and handshake after the first path
did not answer) adds up under one name; :meth:`PhaseTimer.as_dict` keeps the order in which
phases first ended, so the object reads as the connect ran (phases do not nest).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

__all__ = ["PhaseTimer", "with_process_start"]

log = logging.getLogger(__name__)


class PhaseTimer:
    """Accumulates the duration of named phases, in milliseconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._ms: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times the block under ``name``; a block that raises is still counted (a failed
        step's time is part of where the seconds went)."""
        t0 = self._clock()
        try:
            yield
        finally:
            self.add(name, (self._clock() - t0) * 1000.0)

    def add(self, name: str, ms: float) -> None:
        """Adds ``ms`` (measured elsewhere, e.g. by another process) to ``name``."""
        total = self._ms.get(name, 0.0) + max(0.0, ms)
        self._ms[name] = total
        log.debug("connect phase %s: %.1f ms (%.1f ms in all)", name, ms, total)

    def elapsed_ms(self) -> float:
        """Milliseconds since the timer was made."""
        return (self._clock() - self._started) * 1000.0

    def as_dict(self) -> dict[str, float]:
        """``{phase: ms}`` in first-start order, then ``other`` (time outside every phase:
        the glue between steps) and ``total`` (since the timer was made), rounded to 0.1 ms."""
        total = self.elapsed_ms()
        out = {name: round(ms, 1) for name, ms in self._ms.items()}
        out["other"] = round(max(0.0, total - sum(self._ms.values())), 1)
        out["total"] = round(total, 1)
        return out


def with_process_start(daemon: dict[str, float], total_ms: float) -> dict[str, float]:
    """The daemon's timings as ``higgsvpn connect`` reports them: ``process_start`` first (the
    part of ``total_ms``, timed by ``connect`` from the spawn to the answer, that the daemon
    did not see: the interpreter's start, imports, the pipes), ``total`` replaced by
    ``total_ms``."""
    inner = daemon.get("total", 0.0)
    out = {"process_start": round(max(0.0, total_ms - inner), 1)}
    out.update((k, v) for k, v in daemon.items() if k != "total")
    out["total"] = round(total_ms, 1)
    return out
