"""Loaded (via PYTHONPATH) only into the processes the fault tests run under libfaketime.

libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 makes the absolute
clock_nanosleep(CLOCK_MONOTONIC) behind Python's time.sleep fail with EINVAL (and without
that setting it shifts the monotonic clock so far that every threading wait with a timeout
blocks for years). A relative select() timeout is left alone: sleep with that instead.
"""

from __future__ import annotations

import select
import time
from typing import SupportsIndex


def _sleep(secs: float | SupportsIndex) -> None:
    seconds = secs if isinstance(secs, float) else secs.__index__()
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)


time.sleep = _sleep
