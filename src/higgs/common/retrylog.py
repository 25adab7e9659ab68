"""The log of a periodic step that keeps failing: the first failure whole, then a reminder a
minute, then one line when it works again.

A server loop runs every second or so (offline sweep, relay failover, cluster reconciliation).
While PostgreSQL is down each round fails the same way, and a traceback a second buries the
one line that matters (what failed, since when) and fills the disk of the operator who is
already busy bringing the database back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["RetryLog", "every"]

REMIND_S = 60.0


class RetryLog:
    """``failed()`` in the ``except`` of each round, ``ok()`` after a round that worked."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        remind_s: float = REMIND_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._remind_s = remind_s
        self._clock = clock
        self._since: float | None = None  # the first failure of the current run of them
        self._told = 0.0  # when the last line about this run was written
        self._failures = 0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        self._failures += 1
        if self._since is None:
            self._since = self._told = now
            self._log.warning(
                "%s failed; retrying", self._what, exc_info=(type(exc), exc, exc.__traceback__)
            )
        elif now - self._told >= self._remind_s:
            self._told = now
            self._log.warning(
                "%s still failing after %.0f s (%d attempts): %s: %s",
                self._what,
                now - self._since,
                self._failures,
                type(exc).__name__,
                exc,
            )

    def ok(self) -> None:
        if self._since is None:
            return
        self._log.info(
            "%s works again after %.0f s (%d failed attempts)",
            self._what,
            self._clock() - self._since,
            self._failures,
        )
        self._since, self._failures = None, 0


async def every(
    period_s: float, step: Callable[[], Awaitable[Any]], what: str, logger: logging.Logger
) -> None:
    """Runs ``step`` every ``period_s`` for ever; a failing step is logged by :class:`RetryLog`
    and tried again next period."""
    retry = RetryLog(logger, what)
    while True:
        await asyncio.sleep(period_s)
        try:
            await step()
        except Exception as exc:
            retry.failed(exc)
        else:
            retry.ok()
