"""A log line a peer can provoke: a few per window, then one line saying how many were held."""

from __future__ import annotations

import logging

import pytest

from higgs.common.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_is_logged_a_few_times_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    quiet = RateLimitedLog(logging.getLogger("t.ratelog"), interval_s=10, burst=3, clock=clock)
    caplog.set_level(logging.INFO, logger="t.ratelog")
    logged = [quiet.log("bad from n1", logging.WARNING, "bad message %d", i) for i in range(1000)]
    assert logged.count(True) == 3
    assert [r.getMessage() for r in caplog.records] == [f"bad message {i}" for i in range(3)]
    # Another kind (another node) has its own allowance.
    assert quiet.log("bad from n2", logging.WARNING, "bad message from n2")
    caplog.clear()
    clock.now += 10
    assert quiet.log("bad from n1", logging.WARNING, "bad message again")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "997 more like this in the last 10 s were not logged: bad from n1",
        "bad message again",
    ]
    assert caplog.records[0].suppressed == 997  # type: ignore[attr-defined]


def test_the_kinds_remembered_are_bounded() -> None:
    from higgs.common import ratelog

    quiet = RateLimitedLog(logging.getLogger("t.ratelog2"), burst=1)
    for i in range(ratelog.MAX_KEYS * 3):
        quiet.log(f"node {i}", logging.DEBUG, "x")
    assert len(quiet._windows) <= ratelog.MAX_KEYS
