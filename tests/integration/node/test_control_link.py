"""The node's control link against the real relay hub on loopback: control messages applied to
the peer table, relayed sessions bridged to the local WireGuard port from one UDP socket each."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from higgs.common.secrets import hash_token, new_token
from higgs.node.control_link import ControlLink
from higgs.node.peers import PeerManager
from higgs.server.relay.hub import RelayHubServer
from higgs.transport.relay_link import RelayLink
from tests.unit.node.test_peers import K1, K2, K3, Table

NODE = "n_00000000000000aa"


@dataclass
class Events:
    ups: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)

    async def node_link_up(self, node_id: str) -> None:
        self.ups.append(node_id)

    async def node_link_down(self, node_id: str) -> None:
        pass

    async def node_message(self, node_id: str, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def session_activity(self, session_id: str) -> None:
        pass


class FakeWireGuard(asyncio.DatagramProtocol):
    """Stands in for the node's WireGuard port: records (source, datagram), echoes b"re:"+d."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[str, int], bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.seen.append(((str(addr[0]), int(addr[1])), data))
        assert self.transport is not None
        self.transport.sendto(b"re:" + data, addr)


async def until(cond: Callable[[], object]) -> None:
    async with asyncio.timeout(10):
        while not cond():  # noqa: ASYNC110 - bounded poll of observable state
            await asyncio.sleep(0.02)


def peer(session: str, channel: int, key: str, addr: str, relayed: bool) -> dict[str, Any]:
    return {
        "session_id": session,
        "channel": channel,
        "public_key": key,
        "address": addr,
        "relayed": relayed,
    }


@pytest.fixture
async def setup() -> AsyncIterator[
    tuple[RelayHubServer, Events, ControlLink, Table, FakeWireGuard]
]:
    events = Events()
    hub = RelayHubServer(events, CollectorRegistry(), heartbeat_interval_s=1.0)
    await hub.start("127.0.0.1", 0)
    token = new_token("hgn_")
    hub.allow_node(NODE, hash_token(token))
    loop = asyncio.get_running_loop()
    wg_transport, wg = await loop.create_datagram_endpoint(
        FakeWireGuard, local_addr=("127.0.0.1", 0)
    )
    wg_port = wg_transport.get_extra_info("sockname")[1]
    table = Table()
    peers = PeerManager(table, ipaddress.IPv4Interface("10.77.0.1/24"), 8)
    link = ControlLink(
        f"ws://127.0.0.1:{hub.port}/v1/relay/node",
        token,
        peers=peers,
        peer_rows=table.peers,
        wg_port=wg_port,
    )
    await link.start()
    try:
        await until(lambda: events.ups)
        yield hub, events, link, table, wg
    finally:
        await link.stop()
        wg_transport.close()
        await hub.stop()


async def session_client(
    hub: RelayHubServer, session: str, channel: int
) -> tuple[RelayLink, list[bytes]]:
    token = new_token("hgr_")
    hub.open_session(session, channel, NODE, hash_token(token))
    got: list[bytes] = []
    client = RelayLink(
        f"ws://127.0.0.1:{hub.port}/v1/relay/session",
        token,
        on_data=lambda ch, dgrams: got.extend(bytes(d) for d in dgrams),
    )
    client.start()
    await asyncio.wait_for(client.wait_connected(), 10)
    return client, got


async def test_sync_and_relayed_sessions_reach_wireguard_from_distinct_sockets(
    setup: tuple[RelayHubServer, Events, ControlLink, Table, FakeWireGuard],
) -> None:
    hub, events, link, table, wg = setup
    await hub.send_control(
        NODE,
        {
            "type": "sync",
            "peers": [
                peer("s_1", 17, K1, "10.77.0.5/32", True),
                peer("s_2", 18, K2, "10.77.0.6/32", True),
                peer("s_3", 19, K3, "10.77.0.7/32", False),
            ],
        },
    )
    await until(lambda: len(table.rows) == 3 and len(link.relayed_channels) == 2)
    assert link.relayed_channels == [17, 18]

    c1, got1 = await session_client(hub, "s_1", 17)
    c2, got2 = await session_client(hub, "s_2", 18)
    try:
        c1.send_datagrams(17, [b"one", b"two"])
        c2.send_datagrams(18, [b"three"])
        await until(lambda: len(wg.seen) == 3)
        await until(lambda: got1 == [b"re:one", b"re:two"] and got2 == [b"re:three"])
        sources = {data: src for src, data in wg.seen}
        assert sources[b"one"] == sources[b"two"]
        assert sources[b"one"] != sources[b"three"]  # one endpoint per client, as WireGuard needs
        assert all(src[0] == "127.0.0.1" for src in sources.values())

        await hub.send_control(
            NODE,
            {"type": "peer_remove", "session_id": "s_1", "channel": 17, "public_key": K1},
        )
        await until(lambda: K1 not in table.rows and link.relayed_channels == [18])
    finally:
        await c1.close()
        await c2.close()

    # peer_stats goes up every interval (the hub's hello said 1 s).
    await until(lambda: any(m.get("type") == "peer_stats" for m in events.messages))
    stats = next(m for m in events.messages if m["type"] == "peer_stats")
    assert {p["public_key"] for p in stats["peers"]} <= {K1, K2, K3}


async def test_peer_add_is_idempotent_and_bad_or_unknown_messages_are_ignored(
    setup: tuple[RelayHubServer, Events, ControlLink, Table, FakeWireGuard],
) -> None:
    hub, _, link, table, _ = setup
    add = {"type": "peer_add", **peer("s_9", 30, K1, "10.77.0.9/32", True)}
    await hub.send_control(NODE, add)
    await hub.send_control(NODE, add)
    await hub.send_control(NODE, {"type": "reticulate_splines", "level": 3})
    await hub.send_control(NODE, {"type": "peer_add", "session_id": "s_x"})  # fields missing
    await hub.send_control(NODE, {"type": "peer_add", **peer("s_y", 31, K2, "10.77.0.1/32", False)})
    await until(lambda: link.counters["control_invalid"] == 1)
    await until(lambda: link.counters["control_peer_add"] == 3)
    assert link.counters["control_unknown"] == 1
    assert table.rows == {K1: ("10.77.0.9/32",)}  # the node's own address was refused
    assert table.ops == [("set", K1)]
    assert link.relayed_channels == [30]
    assert link.connected


async def test_datagrams_right_behind_a_peer_add_are_held_until_its_bridge_opens(
    setup: tuple[RelayHubServer, Events, ControlLink, Table, FakeWireGuard],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client's first handshake initiation follows its peer_add closely; adding the peer takes
    a while (wg set, routes), and a datagram dropped meanwhile costs a WireGuard retry."""
    hub, _, link, table, wg = setup
    slow_set = table.set_peer

    def set_peer_slowly(key: str, allowed: Any, endpoint: str | None = None) -> None:
        import time

        time.sleep(0.5)
        slow_set(key, allowed, endpoint)

    monkeypatch.setattr(table, "set_peer", set_peer_slowly)
    client, got = await session_client(hub, "s_5", 40)
    refused, _ = await session_client(hub, "s_6", 41)
    try:
        await hub.send_control(
            NODE, {"type": "peer_add", **peer("s_5", 40, K1, "10.77.0.5/32", True)}
        )
        client.send_datagrams(40, [b"initiation"])
        # The node's own address: refused, so what arrived for it is dropped, not held forever.
        await hub.send_control(
            NODE, {"type": "peer_add", **peer("s_6", 41, K2, "10.77.0.1/32", True)}
        )
        refused.send_datagrams(41, [b"stray"])
        await until(lambda: got == [b"re:initiation"])
        await until(
            lambda: link.counters["control_peer_add"] == 2 and link.status()["held_channels"] == 0
        )
        assert [data for _, data in wg.seen] == [b"initiation"]
        assert link.counters["data_held"] == 2
        assert link.counters["data_no_session"] == 1
        assert link.relayed_channels == [40]
    finally:
        await client.close()
        await refused.close()


async def test_a_session_on_a_relay_hosts_hub_carries_its_data_there_not_on_the_control_link(
    setup: tuple[RelayHubServer, Events, ControlLink, Table, FakeWireGuard],
) -> None:
    hub, _events, link, _table, wg = setup
    host = RelayHubServer(Events(), CollectorRegistry())  # a relay host's hub
    await host.start("127.0.0.1", 0)
    try:
        base = f"ws://127.0.0.1:{host.port}"
        # The node is told before the host has read its admissions: its first dial gets 401.
        add = {"type": "peer_add", **peer("s_h", 40, K1, "10.77.0.9/32", True), "relay_hub": base}
        await hub.send_control(NODE, add)
        await until(lambda: 40 in link.relayed_channels)
        await asyncio.sleep(0.5)
        assert host.counters.refused[("node", "unknown")] >= 1
        host.allow_node(NODE, hash_token(node_token(link)))
        client, got = await session_client(host, "s_h", 40)
        await until(lambda: host.is_node_connected(NODE))
        client.send_datagrams(40, [b"ping"])
        await until(lambda: b"re:ping" in got)
        assert [d for _, d in wg.seen] == [b"ping"]  # WireGuard got it from the session's socket
        assert host.tables.counters("s_h") == (
            2,
            (5 + 2 + 4) + (5 + 2 + 7),
        )  # one DATA frame each way
        assert hub.tables.totals() == (0, 0, 0, 0)  # nothing crossed the control link's hub
        assert link.status()["hub_links"] == {base: {"connected": True, "sessions": 1}}
        await client.close()
        await hub.send_control(
            NODE,
            {"type": "peer_remove", "session_id": "s_h", "channel": 40, "public_key": K1,
             "reason": "closed"},
        )  # fmt: skip
        await until(lambda: host.counters.node_links == 0)  # its last session gone
        assert link.status()["hub_links"] == {}
    finally:
        await host.stop()


def node_token(link: ControlLink) -> str:
    return link._link._token  # the node's token, as its control link holds it
