"""The choice of a session's relay host by both legs' RTT (services/relay_choice.py)."""

from __future__ import annotations

from higgs.server.services.relay_choice import UNMEASURED_MS, Candidate, hubs_of, rank

A, B, C = Candidate("10.0.0.1", 100), Candidate("10.0.0.2", 100), Candidate("10.0.0.3", 100)


def addresses(cs: list[Candidate]) -> list[str]:
    return [c.address for c in cs]


def test_the_smallest_sum_of_both_legs_wins_not_the_best_single_leg() -> None:
    # A has the best client leg, C the best node leg; B is best for the whole path.
    client = {A.address: 5.0, B.address: 20.0, C.address: 80.0}
    node = {A.address: 90.0, B.address: 30.0, C.address: 4.0}
    assert addresses(rank([A, B, C], client, node)) == [B.address, C.address, A.address]


def test_a_host_measured_by_both_ends_beats_one_measured_by_one_end_only() -> None:
    client = {A.address: 200.0, B.address: 1.0}
    node = {A.address: 200.0}
    assert addresses(rank([A, B], client, node))[0] == A.address
    assert 1.0 + UNMEASURED_MS > 200.0 + 200.0


def test_without_any_measurement_the_emptier_host_wins_then_the_address() -> None:
    busy, empty = Candidate("10.0.0.1", 3), Candidate("10.0.0.9", 50)
    assert addresses(rank([busy, empty], None, None)) == [empty.address, busy.address]
    assert addresses(rank([B, A], None, None)) == [A.address, B.address]


def test_a_full_host_is_never_chosen() -> None:
    full = Candidate("10.0.0.1", 0)
    assert addresses(rank([full, B], {full.address: 1.0}, {full.address: 1.0})) == [B.address]
    assert rank([full], None, None) == []


def test_a_negative_rtt_counts_as_unmeasured() -> None:
    assert addresses(rank([A, B], {A.address: -5.0, B.address: 10.0}, {B.address: 10.0})) == [
        B.address,
        A.address,
    ]


def test_a_sessions_websocket_hub_is_that_of_the_live_host_its_lease_names() -> None:
    leased_on = {"s1": "198.51.100.10", "s2": "198.51.100.20", "s3": "198.51.100.30"}
    hubs = {"198.51.100.10": "wss://r1.example:8081", "198.51.100.30": "wss://r3.example:8081"}
    # s2's host serves no hub (or is down): absent, so it stays on the instance's hub.
    assert hubs_of(leased_on, hubs) == {
        "s1": "wss://r1.example:8081",
        "s3": "wss://r3.example:8081",
    }
    assert hubs_of(leased_on, {}) == {}
