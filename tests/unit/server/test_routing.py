"""Route selection policy and tunnel address allocation (pure)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from higgs.server.services.routing import (
    Candidate,
    RouteWish,
    allocate_address,
    host_capacity,
    node_address,
    pick,
    score,
)

BASE = Candidate(
    node_id="n_a",
    state="online",
    open_sessions=0,
    max_clients=10,
    country="DE",
    bandwidth_mbps=50,
    has_endpoint=True,
    connected=True,
    free_addresses=100,
)


def test_lower_load_wins() -> None:
    busy = replace(BASE, node_id="n_busy", open_sessions=8)
    idle = replace(BASE, node_id="n_idle", open_sessions=1)
    assert pick([busy, idle], RouteWish())[0] == idle


def test_connected_beats_disconnected_at_equal_load() -> None:
    down = replace(BASE, node_id="n_down", connected=False)
    assert pick([down, BASE], RouteWish())[0] == BASE
    # ...but a disconnected node is still usable when it is the only one.
    assert pick([down], RouteWish())[0] == down


def test_budget_and_latency_count() -> None:
    poor = replace(BASE, node_id="n_poor", budget_left_mb=10, budget_total_mb=1000)
    rich = replace(BASE, node_id="n_rich", budget_left_mb=900, budget_total_mb=1000)
    assert pick([poor, rich], RouteWish())[0] == rich
    far = replace(BASE, node_id="n_far", latency_ms=300)
    near = replace(BASE, node_id="n_near", latency_ms=10)
    assert pick([far, near], RouteWish())[0] == near
    assert score(near) > score(replace(near, latency_ms=None)) > score(far)


@pytest.mark.parametrize(
    ("candidate", "wish", "reason"),
    [
        (replace(BASE, state="offline"), RouteWish(), "no node is online"),
        (replace(BASE, open_sessions=10), RouteWish(), "node is full"),
        (replace(BASE, free_addresses=0), RouteWish(), "no free tunnel address"),
        (replace(BASE, budget_left_mb=0), RouteWish(), "no bandwidth budget left"),
        (BASE, RouteWish(country="FR"), "node is in DE"),
        (BASE, RouteWish(min_bandwidth_mbps=100), "bandwidth below"),
        (replace(BASE, bandwidth_mbps=None), RouteWish(min_bandwidth_mbps=1), "bandwidth below"),
        (replace(BASE, has_endpoint=False), RouteWish(mode="direct"), "no direct endpoint"),
        (BASE, RouteWish(node_id="n_other"), "node n_other does not exist"),
        (replace(BASE, state="stopped"), RouteWish(node_id="n_a"), "node is stopped"),
    ],
)
def test_rejections_say_why(candidate: Candidate, wish: RouteWish, reason: str) -> None:
    best, why = pick([candidate], wish)
    assert best is None
    assert reason in why


def test_pinned_node_only() -> None:
    other = replace(BASE, node_id="n_b")
    assert pick([BASE, other], RouteWish(node_id="n_b"))[0] == other


def test_allocation_skips_network_node_and_broadcast() -> None:
    subnet = "10.9.0.0/29"
    assert node_address(subnet) == ipaddress.IPv4Interface("10.9.0.1/29")
    assert host_capacity(subnet) == 5
    used: list[str] = []
    for _ in range(5):
        addr = allocate_address(subnet, used)
        assert addr is not None
        used.append(f"{addr}/32")
    assert used == [f"10.9.0.{i}/32" for i in range(2, 7)]
    assert allocate_address(subnet, used) is None
    assert allocate_address(subnet, used[1:]) == ipaddress.IPv4Address("10.9.0.2")
