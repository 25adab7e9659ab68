"""The connect's phase recorder: durations from a clock the test steps by hand."""

from __future__ import annotations

import logging

import pytest

from higgs.client.timings import PhaseTimer, with_process_start


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_phases_in_the_order_they_ran_with_other_and_total() -> None:
    clock = Clock()
    timer = PhaseTimer(clock)
    with timer.phase("route_request"):
        clock.now += 0.040
    clock.now += 0.005  # glue between phases
    with timer.phase("interface"):
        clock.now += 0.120
    assert timer.as_dict() == {
        "route_request": 40.0,
        "interface": 120.0,
        "other": 5.0,
        "total": 165.0,
    }


def test_a_phase_run_twice_adds_up_under_its_first_place() -> None:
    clock = Clock()
    timer = PhaseTimer(clock)
    for name, seconds in (("peer", 0.01), ("handshake_direct", 5.0), ("peer", 0.02)):
        with timer.phase(name):
            clock.now += seconds
    out = timer.as_dict()
    assert list(out) == ["peer", "handshake_direct", "other", "total"]
    assert out["peer"] == 30.0


def test_a_phase_that_raises_still_counts() -> None:
    clock = Clock()
    timer = PhaseTimer(clock)

    def fail() -> None:
        with timer.phase("kill_switch"):
            clock.now += 0.25
            raise RuntimeError("nft failed")

    with pytest.raises(RuntimeError):
        fail()
    assert timer.as_dict()["kill_switch"] == 250.0


def test_each_phase_logs_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    timer = PhaseTimer(clock)
    with caplog.at_level(logging.DEBUG, logger="higgs.client.timings"), timer.phase("dns"):
        clock.now += 0.002
    assert [r.getMessage() for r in caplog.records] == ["connect phase dns: 2.0 ms (2.0 ms in all)"]


def test_added_time_from_elsewhere_and_never_negative() -> None:
    timer = PhaseTimer(Clock())
    timer.add("first_packet", 3.5)
    timer.add("first_packet", -1.0)
    assert timer.as_dict()["first_packet"] == 3.5


def test_connect_puts_the_process_start_first_and_its_own_total_last() -> None:
    daemon = {"route_request": 40.0, "interface": 100.0, "other": 10.0, "total": 150.0}
    out = with_process_start(daemon, 600.0)
    assert list(out) == ["process_start", "route_request", "interface", "other", "total"]
    assert out["process_start"] == 450.0
    assert out["total"] == 600.0
    # A clock oddity (the daemon's total above connect's) shows as no start, never negative.
    assert with_process_start(daemon, 100.0)["process_start"] == 0.0
