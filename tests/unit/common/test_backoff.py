"""Backoff: full jitter, growth to the maximum, and the short ceiling right after the peer
was last reachable (a server restart is found within seconds; a dead server is not hammered)."""

from __future__ import annotations

import random

import pytest

from higgs.common.backoff import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def top_of_jitter(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Pins the jitter to its top, so each delay is its attempt's ceiling."""
    if "jittered" not in request.node.name:
        monkeypatch.setattr(random, "uniform", lambda low, high: high)


def ceilings(b: Backoff, n: int) -> list[float]:
    return [b.next_delay() for _ in range(n)]


def test_delays_are_jittered_below_an_exponential_ceiling() -> None:
    b = Backoff(initial=1.0, maximum=8.0)
    for ceiling in [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]:
        assert 0 <= b.next_delay() <= ceiling
    delays = [Backoff(initial=1.0, maximum=8.0).next_delay() for _ in range(200)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 100


def test_right_after_a_loss_the_ceiling_stays_small_then_grows() -> None:
    clock = Clock()
    b = Backoff(initial=0.25, maximum=30.0, recent_maximum=1.0, recent_window_s=60.0, clock=clock)
    assert ceilings(b, 8) == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    clock.now += 59.0
    assert ceilings(b, 1) == [1.0]
    clock.now += 2.0  # the peer has been away for over a minute: back off for real
    assert ceilings(b, 2) == [30.0, 30.0]


def test_a_success_starts_a_new_short_window() -> None:
    clock = Clock()
    b = Backoff(initial=0.25, maximum=30.0, recent_maximum=1.0, recent_window_s=60.0, clock=clock)
    ceilings(b, 10)
    clock.now += 300.0
    assert ceilings(b, 1) == [30.0]
    b.reset()
    clock.now += 5.0
    assert ceilings(b, 4) == [0.25, 0.5, 1.0, 1.0]
