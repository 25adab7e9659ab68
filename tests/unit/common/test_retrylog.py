"""A periodic step failing every second (PostgreSQL down) logs its first failure with the
traceback, then a reminder a minute, then one line when it works again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from higgs.common.retrylog import RetryLog, every


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_every_second_for_three_minutes_logs_four_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    retry = RetryLog(logging.getLogger("t"), "maintenance sweep", clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(180):
            retry.failed(ConnectionRefusedError("connection refused"))
            clock.now += 1
        assert retry.failing
        retry.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "maintenance sweep failed; retrying"
    assert caplog.records[0].exc_info is not None  # the first one whole
    assert lines[1:3] == [
        "maintenance sweep still failing after 60 s (61 attempts): "
        "ConnectionRefusedError: connection refused",
        "maintenance sweep still failing after 120 s (121 attempts): "
        "ConnectionRefusedError: connection refused",
    ]
    assert all(r.exc_info is None for r in caplog.records[1:])
    assert lines[3] == "maintenance sweep works again after 180 s (180 failed attempts)"
    assert len(lines) == 4
    assert not retry.failing


def test_a_round_that_works_says_nothing_and_the_next_failure_is_logged_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    retry = RetryLog(logging.getLogger("t"), "relay failover round", clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        retry.ok()
        assert caplog.records == []
        retry.failed(RuntimeError("a"))
        retry.ok()
        clock.now += 5
        retry.failed(RuntimeError("b"))
    assert [r.getMessage() for r in caplog.records] == [
        "relay failover round failed; retrying",
        "relay failover round works again after 0 s (1 failed attempts)",
        "relay failover round failed; retrying",
    ]
    assert caplog.records[2].exc_info is not None


def test_every_keeps_running_a_failing_step(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise OSError("database away")

    async def main() -> None:
        task = asyncio.create_task(every(0, step, "cluster beat", logging.getLogger("t")))
        for _ in range(100):
            await asyncio.sleep(0)
            if len(calls) >= 5:
                break
        task.cancel()

    with caplog.at_level(logging.INFO, logger="t"):
        asyncio.run(main())
    assert len(calls) >= 5
    assert [r.getMessage() for r in caplog.records] == [
        "cluster beat failed; retrying",
        "cluster beat works again after 0 s (3 failed attempts)",
    ]
