"""PeerManager's decisions, against an in-memory peer table (the real one is tested in the agent's
integration test with wireguard-go)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from higgs.node.peers import HINTS_FOR_S, DesiredPeer, PeerManager

K1 = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
K2 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
K3 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="


@dataclass(frozen=True)
class Row:
    public_key: str
    allowed_ips: tuple[str, ...]
    rx_bytes: int = 0
    tx_bytes: int = 0
    latest_handshake: int = 0


@dataclass
class Table:
    rows: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ops: list[tuple[str, str]] = field(default_factory=list)

    def peers(self) -> Sequence[Row]:
        return [Row(k, v) for k, v in self.rows.items()]

    def set_peer(
        self, public_key: str, allowed_ips: Sequence[str], endpoint: str | None = None
    ) -> None:
        self.ops.append(("set", public_key))
        self.rows[public_key] = tuple(allowed_ips)

    def remove_peer(self, public_key: str) -> None:
        self.ops.append(("remove", public_key))
        self.rows.pop(public_key, None)


def peer(key: str, addr: str, session: str = "s", relayed: bool = False) -> DesiredPeer:
    return DesiredPeer(session, 7, key, addr, relayed)


def manager(table: Table, max_clients: int = 8) -> PeerManager:
    return PeerManager(table, ipaddress.IPv4Interface("10.77.0.1/24"), max_clients)


def test_sync_adds_missing_removes_others_and_is_idempotent() -> None:
    table = Table(rows={K3: ("10.77.0.9/32",), K1: ("10.77.0.5/32",)})
    m = manager(table)
    result = m.sync([peer(K1, "10.77.0.5/32", "s1"), peer(K2, "10.77.0.6/32", "s2")])
    assert table.rows == {K1: ("10.77.0.5/32",), K2: ("10.77.0.6/32",)}
    assert result.added == ("s2",)
    assert result.removed == (K3,)
    table.ops.clear()
    m.sync([peer(K1, "10.77.0.5/32", "s1"), peer(K2, "10.77.0.6/32", "s2")])
    assert table.ops == []


def test_add_is_idempotent_and_updates_a_changed_address() -> None:
    table = Table()
    m = manager(table)
    assert m.add(peer(K1, "10.77.0.5/32"))
    assert m.add(peer(K1, "10.77.0.5/32"))
    assert table.ops == [("set", K1)]
    assert m.add(peer(K1, "10.77.0.8/32", "s-new"))
    assert table.rows[K1] == ("10.77.0.8/32",)


def test_refuses_addresses_that_are_not_a_clients() -> None:
    table = Table()
    m = manager(table)
    for bad in ("10.77.0.1/32", "10.77.0.0/32", "10.77.0.255/32", "10.78.0.5/32", "10.77.0.0/24"):
        assert not m.add(peer(K1, bad)), bad
    assert m.add(peer(K1, "10.77.0.5/32"))
    assert not m.add(peer(K2, "10.77.0.5/32"))  # another peer's address
    assert table.rows == {K1: ("10.77.0.5/32",)}


def test_max_clients_is_enforced() -> None:
    table = Table()
    m = manager(table, max_clients=1)
    assert m.add(peer(K1, "10.77.0.5/32"))
    assert not m.add(peer(K2, "10.77.0.6/32"))
    result = m.sync([peer(K1, "10.77.0.5/32", "a"), peer(K2, "10.77.0.6/32", "b")])
    assert result.refused == ("b",)
    assert list(table.rows) == [K1]


def test_remove_of_a_replaced_session_keeps_the_new_one() -> None:
    table = Table()
    m = manager(table)
    m.add(peer(K1, "10.77.0.5/32", "old"))
    m.add(peer(K1, "10.77.0.5/32", "new"))
    assert not m.remove(K1, "old")
    assert K1 in table.rows
    assert m.remove(K1, "new")
    assert table.rows == {}
    assert m.remove(K1, "new")  # absent: still fine


def test_changes_are_reported_and_an_exhausted_budget_refuses_new_clients() -> None:
    table = Table()
    seen: list[list[str]] = []
    accepting = [True]
    m = PeerManager(
        table,
        ipaddress.IPv4Interface("10.77.0.1/24"),
        8,
        on_change=seen.append,
        accepting=lambda: accepting[0],
    )
    assert m.add(peer(K1, "10.77.0.5/32", "a"))
    accepting[0] = False
    assert not m.add(peer(K2, "10.77.0.6/32", "b"))
    assert m.add(peer(K1, "10.77.0.5/32", "a"))  # already connected: kept
    result = m.sync([peer(K1, "10.77.0.5/32", "a"), peer(K2, "10.77.0.6/32", "b")])
    assert result.refused == ("b",)
    m.remove(K1, "a")
    assert seen == [["10.77.0.5/32"], ["10.77.0.5/32"], ["10.77.0.5/32"], []]


def test_with_ipv6_each_peer_also_gets_its_derived_ipv6_address() -> None:
    table = Table()
    m = PeerManager(
        table,
        ipaddress.IPv4Interface("10.77.0.1/24"),
        8,
        tunnel_v6=ipaddress.IPv6Interface("fd12:3456:789a::1/64"),
    )
    assert m.add(peer(K1, "10.77.0.5/32", "s1"))
    m.sync([peer(K1, "10.77.0.5/32", "s1"), peer(K2, "10.77.0.6/32", "s2")])
    assert table.rows == {
        K1: ("10.77.0.5/32", "fd12:3456:789a::5/128"),
        K2: ("10.77.0.6/32", "fd12:3456:789a::6/128"),
    }


def test_the_final_counters_of_removed_peers_are_told_before_they_go() -> None:
    table = Table(rows={K1: ("10.77.0.5/32",), K2: ("10.77.0.6/32",), K3: ("10.77.0.7/32",)})
    told: list[tuple[list[str], dict[str, tuple[str, ...]]]] = []
    m = PeerManager(
        table,
        ipaddress.IPv4Interface("10.77.0.1/24"),
        8,
        on_removing=lambda rows: told.append(([r.public_key for r in rows], dict(table.rows))),
    )
    m.sync([peer(K1, "10.77.0.5/32", "s1"), peer(K2, "10.77.0.6/32", "s2"),
            peer(K3, "10.77.0.7/32", "s3")])  # fmt: skip
    assert told == []
    m.sync([peer(K1, "10.77.0.5/32", "s1"), peer(K2, "10.77.0.6/32", "s2")])
    assert told[-1][0] == [K3]
    assert K3 in told[-1][1]  # read while the peer was still there
    assert m.remove(K2, "s2")
    assert told[-1][0] == [K2]
    assert K2 in told[-1][1]
    assert K2 not in table.rows


@dataclass
class EndpointTable(Table):
    endpoints: dict[str, str | None] = field(default_factory=dict)

    def set_peer(
        self, public_key: str, allowed_ips: Sequence[str], endpoint: str | None = None
    ) -> None:
        super().set_peer(public_key, allowed_ips)
        if endpoint is not None:
            self.endpoints[public_key] = endpoint


def test_a_peer_moved_to_another_relay_host_is_re_added_for_a_fresh_handshake() -> None:
    table = EndpointTable()
    m = manager(table)
    first = DesiredPeer("s1", 7, K1, "10.77.0.5/32", False, "192.0.2.10:40001")
    assert m.add(first)
    m.sync([first])  # the same endpoint again: nothing to do
    assert table.ops == [("set", K1)]
    moved = DesiredPeer("s1", 7, K1, "10.77.0.5/32", False, "198.51.100.10:41000")
    m.sync([moved])  # the server moved the session (its relay host died)
    assert table.ops == [("set", K1), ("remove", K1), ("set", K1)]
    assert table.endpoints[K1] == "198.51.100.10:41000"


def test_a_direct_peer_given_a_relay_endpoint_is_re_added_for_a_fresh_handshake() -> None:
    """Issue 18: a direct device's node lost its direct endpoint and the server leased the
    device a relay port; the peer's keys would only send keepalives to the relay, which it
    drops, so the peer is made afresh (it initiates at once) and its counters are told."""
    table = EndpointTable()
    told: list[list[str]] = []
    m = PeerManager(
        table,
        ipaddress.IPv4Interface("10.77.0.1/24"),
        8,
        on_removing=lambda rows: told.append([r.public_key for r in rows]),
    )
    direct = DesiredPeer("s1", 7, K1, "10.77.0.5/32", False)
    assert m.add(direct)
    relayed = DesiredPeer("s1", 7, K1, "10.77.0.5/32", False, "192.0.2.10:40001")
    m.sync([relayed])
    assert table.ops == [("set", K1), ("remove", K1), ("set", K1)]
    assert table.endpoints[K1] == "192.0.2.10:40001"
    assert told == [[K1]]
    m.sync([relayed])  # the same endpoint again: nothing to do
    assert len(table.ops) == 3


class ShakingTable(Table):
    """A table whose peers report a handshake once ``shaken`` holds their key."""

    shaken: set[str]

    def __init__(self) -> None:
        super().__init__()
        self.shaken = set()

    def peers(self) -> Sequence[Row]:
        return [Row(k, v, latest_handshake=int(k in self.shaken)) for k, v in self.rows.items()]


def test_a_relay_peer_without_a_handshake_gets_fresh_initiations_then_wireguards_own() -> None:
    now = [100.0]
    table = ShakingTable()
    m = PeerManager(table, ipaddress.IPv4Interface("10.77.0.1/24"), 8, clock=lambda: now[0])
    relay = DesiredPeer("s1", 7, K1, "10.77.0.5/32", False, relay_endpoint="198.51.100.10:40005")
    assert m.add(relay)
    assert m.add(peer(K2, "10.77.0.6/32", "s2"))  # direct: WireGuard's own business
    table.ops.clear()
    assert m.initiating
    now[0] += 0.3
    assert m.reinitiate() == []
    now[0] += 0.3  # 0.6 s after the endpoint was set
    assert m.reinitiate() == ["s1"]
    assert table.ops == [("remove", K1), ("set", K1)]
    assert table.rows[K1] == ("10.77.0.5/32",)
    now[0] += 0.5  # 1.1 s
    assert m.reinitiate() == ["s1"]
    now[0] += 10.0  # long past the rest: one at a time, then WireGuard's own
    assert [m.reinitiate() for _ in range(4)] == [["s1"], ["s1"], ["s1"], []]
    assert not m.initiating


def test_a_relay_peer_with_a_handshake_is_left_alone() -> None:
    now = [100.0]
    table = ShakingTable()
    m = PeerManager(table, ipaddress.IPv4Interface("10.77.0.1/24"), 8, clock=lambda: now[0])
    relay = DesiredPeer("s1", 7, K1, "10.77.0.5/32", False, relay_endpoint="198.51.100.10:40005")
    assert m.add(relay)
    table.shaken.add(K1)
    table.ops.clear()
    now[0] += 5.0
    assert m.reinitiate() == []
    assert table.ops == []
    assert not m.initiating


def test_a_restarted_node_initiates_to_its_direct_peers_last_endpoints() -> None:
    """The crashed run's interface had K1 direct at 203.0.113.7:51000: the first time the
    server gives K1 again, it is set with that endpoint (WireGuard, with a keepalive, then
    initiates at once); once only. A WebSocket-relayed peer (K2: its old bridge died with the
    process) gets its new bridge once that is open; a UDP relay peer its relay endpoint."""
    table = EndpointTable()
    hints = {K1: "203.0.113.7:51000", K2: "127.0.0.1:40123", K3: "203.0.113.9:51000"}
    m = PeerManager(table, ipaddress.IPv4Interface("10.77.0.1/24"), 8, endpoint_hints=hints)
    ws = DesiredPeer("s2", 8, K2, "10.77.0.6/32", True)  # its data comes through our bridge
    # A UDP relay session has a WebSocket bridge too (the fallback): it stays on the relay.
    udp = DesiredPeer("s3", 9, K3, "10.77.0.7/32", True, "192.0.2.10:40001")
    m.sync([peer(K1, "10.77.0.5/32", "s1"), ws, udp])
    assert table.endpoints == {K1: "203.0.113.7:51000", K3: "192.0.2.10:40001"}
    assert m.initiate_bridged({8: "127.0.0.1:40999", 9: "127.0.0.1:40998"}) == ["s2"]
    assert table.endpoints[K2] == "127.0.0.1:40999"
    assert m.initiate_bridged({8: "127.0.0.1:40999"}) == []  # once
    # Removed and given again (a new session of the same client): no stale hint this time.
    m.remove(K1, "s1")
    table.endpoints.clear()
    assert m.add(peer(K1, "10.77.0.5/32", "s4"))
    assert table.endpoints == {}
    assert hints[K1] == "203.0.113.7:51000"  # the caller's mapping is not consumed


def test_without_hints_a_direct_peer_has_no_endpoint() -> None:
    table = EndpointTable()
    m = manager(table)
    m.sync([peer(K1, "10.77.0.5/32", "s1")])
    assert table.endpoints == {}


def test_a_crashed_runs_endpoints_are_not_used_for_peers_given_much_later() -> None:
    table = EndpointTable()
    now = [100.0]
    m = PeerManager(
        table,
        ipaddress.IPv4Interface("10.77.0.1/24"),
        8,
        endpoint_hints={K1: "203.0.113.7:51000", K2: "127.0.0.1:40123"},
        clock=lambda: now[0],
    )
    now[0] += HINTS_FOR_S + 1
    m.sync([peer(K1, "10.77.0.5/32", "s1"), DesiredPeer("s2", 8, K2, "10.77.0.6/32", True)])
    assert m.initiate_bridged({8: "127.0.0.1:40999"}) == []
    assert table.endpoints == {}
    assert not m.restoring
