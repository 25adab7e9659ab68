"""The WebSocket relay's client leg bridged to a UDP relay port (issue 11 item 4): the hub with
fake WebSocket transports and a real loopback UDP socket standing in for the relay port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from higgs.protocol.relay import HEADER_SIZE, RECORD_HEADER_SIZE, encode_data
from higgs.server.relay.bridge import (
    FALLBACK_S,
    BridgeDrop,
    BridgePath,
    datagrams_of,
    parse_endpoint,
    wireguard_shaped,
)
from higgs.server.relay.hub import RelayHubServer
from higgs.server.relay.links import NodeLink, SessionLink
from tests.unit.server.test_relay_links import Events, FakeFrame, FakeTransport, feed

CHANNEL = 9
INITIATION = b"\x01\0\0\0" + bytes(range(144))
RESPONSE = b"\x02\0\0\0" + bytes(88)
DATA = b"\x04\0\0\0" + bytes(60)


def test_only_wireguard_layouts_are_shaped_right() -> None:
    assert wireguard_shaped(INITIATION)
    assert wireguard_shaped(RESPONSE)
    assert wireguard_shaped(b"\x03\0\0\0" + bytes(60))
    assert wireguard_shaped(DATA)
    assert not wireguard_shaped(INITIATION[:-1])  # a handshake has one size
    assert not wireguard_shaped(b"\x04\0\0\0" + bytes(27))  # data shorter than its minimum
    assert not wireguard_shaped(b"\x04\0\1\0" + bytes(60))  # reserved bytes not zero
    assert not wireguard_shaped(b"\x05\0\0\0" + bytes(60))
    assert not wireguard_shaped(b"")


def test_the_records_of_a_frame_are_split_unchanged() -> None:
    frame = encode_data(3, [b"ab", b"c", DATA])
    assert list(datagrams_of(frame)) == [b"ab", b"c", DATA]
    assert len(frame) == HEADER_SIZE + 3 * RECORD_HEADER_SIZE + 3 + len(DATA)


def test_endpoints_parse_and_bad_ones_say_why() -> None:
    assert parse_endpoint("192.0.2.1:40001") == ("192.0.2.1", 40001)
    assert parse_endpoint("[2001:db8::1]:40001") == ("2001:db8::1", 40001)
    for bad in ("192.0.2.1", "192.0.2.1:0", "host:1", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match=r"endpoint|address"):
            parse_endpoint(bad)


def test_the_path_falls_back_when_the_port_stays_silent_and_returns_when_it_answers() -> None:
    path = BridgePath()
    assert path.udp(0.0)
    path.sent(0.0)
    path.sent(5.0)  # the first unanswered send counts
    assert path.udp(FALLBACK_S - 0.1)
    assert not path.udp(FALLBACK_S)
    path.heard(20.0)
    assert path.udp(20.0 + 10 * FALLBACK_S)  # no send since: nothing unanswered


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Bridged:
    def __init__(self, hub: RelayHubServer, port: socket.socket, clock: Clock) -> None:
        self.hub, self.port, self.clock = hub, port, clock
        node_entry = hub.tables.node_by_token("node-token")
        session_entry = hub.tables.session_by_token("relay-token")
        assert node_entry is not None
        assert session_entry is not None
        self.node, self.node_ws = NodeLink(hub, node_entry, None), FakeTransport()
        self.node.on_ws_connected(self.node_ws)  # type: ignore[arg-type]
        self.client, self.client_ws = SessionLink(hub, session_entry, None), FakeTransport()
        self.client.on_ws_connected(self.client_ws)  # type: ignore[arg-type]

    async def at_port(self) -> tuple[bytes, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recvfrom(self.port, 65535), 5)

    async def to_client(self, count: int) -> list[bytes]:
        for _ in range(200):
            got = self.client_ws.binaries() + [
                w for w in self.client_ws.underlying_transport.written
            ]
            if len(got) >= count:
                return got
            await asyncio.sleep(0.01)
        return self.client_ws.binaries()

    def drops(self, reason: BridgeDrop) -> int:
        return self.hub.bridges.counters.drops[reason]


@pytest.fixture
async def bridged() -> AsyncIterator[Bridged]:
    port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port.bind(("127.0.0.1", 0))
    port.setblocking(False)
    hub = RelayHubServer(Events(), CollectorRegistry())
    clock = Clock()
    hub.bridges._clock = clock
    hub.allow_node("n_1", "node-token")
    hub.open_session("s_1", CHANNEL, "n_1", "relay-token")
    hub.bridge_session("s_1", f"127.0.0.1:{port.getsockname()[1]}")
    b = Bridged(hub, port, clock)
    await asyncio.sleep(0)
    yield b
    hub.close_session("s_1", "test over")
    port.close()


def _down(frames: list[bytes]) -> list[bytes]:
    """Datagrams of the DATA frames the client link got (frames coalesced into raw writes
    carry a 2- or 4-byte WebSocket header first)."""
    out: list[bytes] = []
    for f in frames:
        if f[0] == 0x82:
            f = f[2:] if f[1] < 126 else f[4:]
        out.extend(datagrams_of(f))
    return out


async def test_the_client_leg_reaches_the_udp_port_and_the_node_link_carries_nothing(
    bridged: Bridged,
) -> None:
    feed(bridged.client, FakeFrame(encode_data(CHANNEL, [INITIATION])))
    datagram, source = await bridged.at_port()
    assert datagram == INITIATION  # unchanged, without the relay frame around it
    bridged.port.sendto(RESPONSE, source)
    assert _down(await bridged.to_client(1)) == [RESPONSE]
    feed(bridged.client, FakeFrame(encode_data(CHANNEL, [DATA, DATA])))
    assert (await bridged.at_port())[0] == DATA
    assert (await bridged.at_port())[0] == DATA
    assert bridged.node_ws.binaries() == []
    assert bridged.node_ws.underlying_transport.written == []
    c = bridged.hub.bridges.counters
    assert (c.to_udp_datagrams, c.from_udp_datagrams, c.fallback_datagrams) == (3, 1, 0)
    assert bridged.hub.session_counters("s_1")[0] == 4  # usage and activity still see it


async def test_malformed_datagrams_are_dropped_and_counted_both_ways(bridged: Bridged) -> None:
    feed(bridged.client, FakeFrame(encode_data(CHANNEL, [b"\x09not wireguard", INITIATION])))
    datagram, source = await bridged.at_port()
    assert datagram == INITIATION
    assert bridged.drops(BridgeDrop.MALFORMED) == 1
    bridged.port.sendto(b"\x04\0\0\0short", source)
    bridged.port.sendto(RESPONSE, source)
    assert _down(await bridged.to_client(1)) == [RESPONSE]
    assert bridged.drops(BridgeDrop.MALFORMED) == 2


async def test_a_silent_port_falls_back_to_the_node_link_and_an_answer_brings_it_back(
    bridged: Bridged,
) -> None:
    feed(bridged.client, FakeFrame(encode_data(CHANNEL, [INITIATION])))
    _, source = await bridged.at_port()
    bridged.clock.now += FALLBACK_S + 1  # nothing came back
    data = encode_data(CHANNEL, [DATA])
    feed(bridged.client, FakeFrame(data))
    assert bridged.node_ws.binaries() == [data]  # the node's WebSocket path
    probe = encode_data(CHANNEL, [INITIATION])
    feed(bridged.client, FakeFrame(probe))
    assert bridged.node_ws.binaries() == [data, probe]
    assert (await bridged.at_port())[0] == INITIATION  # copied to the port as a probe
    bridged.port.sendto(RESPONSE, source)
    await bridged.to_client(1)
    feed(bridged.client, FakeFrame(data))
    assert (await bridged.at_port())[0] == DATA  # back on UDP
    assert bridged.node_ws.binaries() == [data, probe]
    assert bridged.hub.bridges.counters.fallback_datagrams == 2


async def test_without_a_bridge_the_node_link_carries_the_session(bridged: Bridged) -> None:
    bridged.hub.bridge_session("s_1", None)
    data = encode_data(CHANNEL, [DATA])
    feed(bridged.client, FakeFrame(data))
    assert bridged.node_ws.binaries() == [data]
    assert bridged.hub.bridges.path("s_1") is None
