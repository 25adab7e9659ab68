"""The daemon's reroute decisions, with no host, no sockets, no clock: what the user sees as
"the tunnel moved to another node" starts here."""

from __future__ import annotations

import pytest

from higgs.client.connect import PeerStats, Tunnel
from higgs.client.reroute import STALE_HANDSHAKE_S, reroute_reason, session_gone
from tests.unit.client.test_connect import FakeRelay, _route

T0 = 1_000_000.0


def _tunnel(relay: FakeRelay | None = None) -> Tunnel:
    return Tunnel(_route(), "relay" if relay else "direct", relay, connected_at=T0)


def _stats(last_handshake: float) -> PeerStats:
    return PeerStats(last_handshake, 0, 0, "203.0.113.10:51820")


def test_a_fresh_tunnel_is_left_alone_even_before_its_first_handshake() -> None:
    assert reroute_reason(_tunnel(), None, now=T0 + STALE_HANDSHAKE_S - 1) is None
    assert reroute_reason(_tunnel(), _stats(0.0), now=T0 + 10) is None


def test_recent_handshakes_keep_the_route() -> None:
    now = T0 + 3600
    assert reroute_reason(_tunnel(), _stats(now - 120), now=now) is None


def test_a_stale_handshake_takes_a_new_route_and_names_the_node() -> None:
    now = T0 + 3600
    reason = reroute_reason(_tunnel(), _stats(now - STALE_HANDSHAKE_S - 1), now=now)
    assert reason == f"no handshake with node n_0123456789abcdef for {STALE_HANDSHAKE_S:g}s"
    # Never any handshake, long after connecting: just as dead.
    assert reroute_reason(_tunnel(), _stats(0.0), now=now) is not None
    assert reroute_reason(_tunnel(), None, now=now) is not None


def test_a_closed_relay_link_takes_a_new_route_at_once() -> None:
    relay = FakeRelay(reason="node gone (4004)")
    assert reroute_reason(_tunnel(relay), _stats(T0 + 5), now=T0 + 5) == (
        "relay link closed: node gone (4004)"
    )
    assert reroute_reason(_tunnel(FakeRelay()), _stats(T0 + 5), now=T0 + 5) is None


@pytest.mark.parametrize(
    ("status", "gone"), [(404, True), (409, True), (410, True), (500, False), (None, False)]
)
def test_only_a_lost_session_stops_renewing(status: int | None, gone: bool) -> None:
    # 5xx and "unreachable" (None) are retried: the session may well still be there.
    assert session_gone(status) is gone
