"""SIGTERM, SIGINT and SIGHUP caught from the daemon's first moment, handed on later.

Both daemons undo a crashed predecessor's journal before they serve. A signal arriving then,
with Python's default handlers, killed the process halfway through that undo (SIGTERM) or
raised KeyboardInterrupt in the event loop while the undo went on in a worker thread
(SIGINT). :class:`StopSignals` is installed before anything touches the host: a signal is
remembered, the recovery finishes, and the daemon then stops cleanly instead of serving.
Once the daemon runs, :meth:`StopSignals.hand_over` routes the signals to its own stop (and
replays one that came in between).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

__all__ = ["SIGNALS", "StopSignals"]

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopSignals:
    """The stop signals of one event loop; :attr:`reason` is the first one received."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.reason: str | None = None
        self._target: Callable[[str], None] | None = None
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._received, signal.Signals(sig).name)

    @classmethod
    def install(cls) -> StopSignals:
        """On the running loop (call it first thing in the daemon's main coroutine)."""
        return cls(asyncio.get_running_loop())

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def _received(self, name: str) -> None:
        if self._target is not None:
            self._target(name)
            return
        if self.reason is None:
            self.reason = name
            log.warning(
                "stop requested (%s) during start-up; stopping once the recovery is finished",
                name,
                extra={"signal": name},
            )

    def hand_over(self, stop: Callable[[str], None]) -> None:
        """From now on a signal calls ``stop(name)``; one already received is passed on now."""
        self._target = stop
        if self.reason is not None:
            stop(self.reason)

    def remove(self) -> None:
        """Back to the default handlers (the loop is about to end)."""
        for sig in SIGNALS:
            self._loop.remove_signal_handler(sig)
