"""Two instances' cluster hubs on one in-process bus (no sockets, no database)."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from higgs.server.cluster.bus import ALL, LocalBus
from higgs.server.cluster.hub import ClusterHub


class FakeLocal:
    """The local relay hub: which nodes are linked here, what it was told."""

    def __init__(self) -> None:
        self.linked: set[str] = set()
        self.allowed: dict[str, str] = {}
        self.sessions: dict[str, tuple[int, str, str]] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.forgotten: list[str] = []
        self.bridged: dict[str, str | None] = {}

    def allow_node(self, node_id: str, token_hash: str) -> None:
        self.allowed[node_id] = token_hash

    def forget_node(self, node_id: str, reason: str) -> None:
        self.allowed.pop(node_id, None)
        self.forgotten.append(node_id)

    def node_offline(self, node_id: str, reason: str) -> None:
        pass

    def open_session(self, session_id: str, channel: int, node_id: str, token_hash: str) -> None:
        self.sessions[session_id] = (channel, node_id, token_hash)

    def bridge_session(self, session_id: str, endpoint: str | None) -> None:
        self.bridged[session_id] = endpoint

    def close_session(self, session_id: str, reason: str) -> None:
        self.sessions.pop(session_id, None)

    async def send_control(self, node_id: str, message: dict[str, Any]) -> bool:
        if node_id not in self.linked:
            return False
        self.sent.append((node_id, message))
        return True

    def is_node_connected(self, node_id: str) -> bool:
        return node_id in self.linked

    def session_counters(self, session_id: str) -> tuple[int, int]:
        return (0, 0)

    def connected_nodes(self) -> list[str]:
        return sorted(self.linked)

    def allowed_nodes(self) -> list[str]:
        return sorted(self.allowed)

    def admitted_sessions(self) -> list[str]:
        return sorted(self.sessions)

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        pass

    @property
    def port(self) -> int:
        return 0

    async def stop(self) -> None:
        pass


async def pair() -> tuple[LocalBus, ClusterHub, FakeLocal, ClusterHub, FakeLocal]:
    bus = LocalBus()
    la, lb = FakeLocal(), FakeLocal()
    a = ClusterHub(la, bus, "a", "ws://a:8081")
    b = ClusterHub(lb, bus, "b", "ws://b:8081")
    await a.attach()
    await b.attach()
    return bus, a, la, b, lb


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_command_for_a_node_linked_elsewhere_goes_to_its_holder() -> None:
    _bus, a, la, b, lb = await pair()
    lb.linked.add("n1")
    b.link_up("n1")
    await settle()
    assert a.is_node_connected("n1")
    assert a.relay_base_for("n1") == "ws://b:8081"
    assert await a.send_control("n1", {"type": "peer_add"})
    assert lb.sent == [("n1", {"type": "peer_add"})]
    assert la.sent == []


async def test_admissions_reach_every_instance() -> None:
    _bus, a, _la, _b, lb = await pair()
    a.allow_node("n1", "h1")
    a.open_session("s1", 7, "n1", "t1")
    await settle()
    assert lb.allowed == {"n1": "h1"}
    assert lb.sessions == {"s1": (7, "n1", "t1")}
    # The client's relay link may land on the other instance: it bridges the session too.
    a.bridge_session("s1", "198.51.100.10:40001")
    await settle()
    assert lb.bridged == {"s1": "198.51.100.10:40001"}
    a.close_session("s1", "client_closed")
    a.forget_node("n1", "stopped")
    await settle()
    assert lb.sessions == {}
    assert lb.forgotten == ["n1"]


async def test_a_command_the_bus_cannot_carry_is_flagged_for_resync() -> None:
    bus, a, _la, b, lb = await pair()
    lb.linked.add("n1")
    b.link_up("n1")
    await settle()
    flagged: list[str] = []

    async def lost(node_id: str) -> None:
        flagged.append(node_id)

    a.on_lost = lost
    bus.up = False
    assert not await a.send_control("n1", {"type": "peer_add"})
    assert flagged == ["n1"]
    assert lb.sent == []


async def test_revocations_drop_the_other_instances_caches() -> None:
    _bus, a, _la, b, _lb = await pair()
    dropped: list[str] = []
    b.on_invalidate = dropped.append
    a.invalidate("clients")
    await settle()
    assert dropped == ["clients"]


async def test_malformed_bus_messages_are_dropped_and_counted() -> None:
    bus, _a, _la, b, lb = await pair()
    for junk in (
        {"from": "x"},
        {"from": "x", "op": "open_session", "session_id": "s", "channel": "7"},
        {"from": "x", "op": "nonsense"},
        {"from": 5, "op": "allow_node"},
        {"from": "x", "op": "invalidate", "kind": "everything"},
    ):
        await bus.publish(ALL, junk)
    assert b.dropped == 5
    assert lb.sessions == {}
    assert lb.allowed == {}


async def test_a_link_down_from_an_old_holder_does_not_erase_a_newer_one() -> None:
    _bus, a, _la, b, lb = await pair()
    lb.linked.add("n1")
    b.link_up("n1")
    await settle()
    # A stale link_down from instance "c" (which held the node before) changes nothing.
    await b.bus.publish(ALL, {"from": "c", "op": "link_down", "node_id": "n1"})
    assert a.holders["n1"].instance_id == "b"


async def test_a_resync_flag_the_database_refused_waits_for_the_reconciliation() -> None:
    bus, a, _la, _b, _lb = await pair()

    async def database_down(node_id: str) -> None:
        raise OSError("connection refused")

    a.on_lost = database_down
    bus.up = False
    assert not await a.send_control("n1", {"type": "peer_remove"})
    assert a.lost == {"n1"}


async def test_a_presence_snapshot_read_before_a_link_up_does_not_erase_it() -> None:
    _bus, a, _la, b, lb = await pair()
    since = time.monotonic()  # the reconciliation's read begins: n1 is linked nowhere yet
    lb.linked.add("n1")
    b.link_up("n1")  # heard on the bus while the read is under way
    await settle()
    a.set_holders({}, since)  # the read's answer, from before the claim
    assert a.holders["n1"].instance_id == "b"
    # The next read (begun after the link_up) is taken as it is.
    a.set_holders({}, time.monotonic() + 1)
    assert "n1" not in a.holders


async def test_admissions_heard_during_a_read_are_not_undone_by_it() -> None:
    _bus, a, _la, b, lb = await pair()
    since = time.monotonic()
    a.allow_node("n1", "h1")
    a.open_session("s1", 7, "n1", "t1")
    await settle()
    # A read begun before those changes may not show them: b leaves them alone.
    assert b.changed_since("node", "n1", since)
    assert b.changed_since("session", "s1", since)
    assert not b.changed_since("node", "n2", since)
    assert not b.changed_since("node", "n1", time.monotonic() + 1)
    assert lb.allowed == {"n1": "h1"}
