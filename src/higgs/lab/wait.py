"""The one poll-with-a-deadline of the lab, its tests, the demo and the benchmarks.

Tests never assert on a fixed sleep: they wait until what the user would check holds, or a
deadline (generous: the machine is shared and loaded) passes, and then fail naming it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

from .errors import LabError

__all__ = ["WaitTimeout", "wait_until"]

T = TypeVar("T")


class WaitTimeout(LabError, AssertionError):
    """The condition did not hold in time. An AssertionError too: in a test it is a failure
    of what the test checks, not an error of the harness."""


def wait_until(
    what: str,
    # "Not yet" is None or False, so the value returned is never that: a check of type
    # ``() -> dict | None`` gives a dict.
    check: Callable[[], T | Literal[False] | None],
    timeout: float = 30.0,
    every: float = 0.2,
    *,
    tolerate: tuple[type[Exception], ...] = (),
) -> T:
    """Calls ``check()`` every ``every`` seconds until it returns something truthy, and
    returns that. An exception of a ``tolerate`` type counts as "not yet" (e.g. a server that
    is still starting); the last one is named when the deadline passes."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = check()
        except tolerate as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            why = f" (last error: {last})" if last is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{why}")
        time.sleep(every)
