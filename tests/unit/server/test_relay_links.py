"""The relay's server-side links with a fake WebSocket transport (no sockets): what a node and
a client see when they attach, which frames cross, what is dropped and counted, write
coalescing, backpressure, and the close codes the hub sends."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from picows import WSMsgType
from prometheus_client import CollectorRegistry

from higgs.protocol.relay import CloseCode, DropReason, encode_data
from higgs.server.relay.hub import RelayHubServer
from higgs.server.relay.links import NodeLink, SessionLink


class FakeRaw:
    """The asyncio transport under the WebSocket: coalesced writes and read pausing."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class FakeTransport:
    def __init__(self) -> None:
        self.underlying_transport = FakeRaw()
        self.sent: list[tuple[WSMsgType, bytes]] = []
        self.closed_with: tuple[int, bytes] | None = None

    def send(self, msg_type: WSMsgType, payload: bytes) -> None:
        self.sent.append((msg_type, bytes(payload)))

    def send_close(self, code: Any, reason: bytes) -> None:
        self.closed_with = (int(code), reason)

    def disconnect(self) -> None:
        pass

    def send_ping(self) -> None:
        pass

    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.sent if t == WSMsgType.TEXT]

    def binaries(self) -> list[bytes]:
        return [p for t, p in self.sent if t == WSMsgType.BINARY]


@dataclass
class FakeFrame:
    payload: bytes
    msg_type: WSMsgType = WSMsgType.BINARY
    fin: bool = True
    last_in_buffer: bool = True

    @property
    def payload_size(self) -> int:
        return len(self.payload)

    def get_payload_as_bytes(self) -> bytes:
        return self.payload

    def get_payload_as_memoryview(self) -> memoryview:
        return memoryview(self.payload)


@dataclass
class Events:
    ups: list[str] = field(default_factory=list)
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def node_link_up(self, node_id: str) -> None:
        self.ups.append(node_id)

    async def node_link_down(self, node_id: str) -> None:
        pass

    async def node_message(self, node_id: str, message: dict[str, Any]) -> None:
        self.messages.append((node_id, message))

    def session_activity(self, session_id: str) -> None:
        pass


@dataclass
class Relay:
    hub: RelayHubServer
    events: Events
    node: NodeLink
    node_ws: FakeTransport
    client: SessionLink
    client_ws: FakeTransport

    def dropped(self, reason: DropReason) -> int:
        return self.hub.counters.drops[reason]


CHANNEL = 7


@pytest.fixture
async def relay() -> Relay:
    events = Events()
    hub = RelayHubServer(events, CollectorRegistry())
    hub.allow_node("n_1", "node-token")
    hub.open_session("s_1", CHANNEL, "n_1", "relay-token")
    node_entry = hub.tables.node_by_token("node-token")
    session_entry = hub.tables.session_by_token("relay-token")
    assert node_entry is not None
    assert session_entry is not None
    node, node_ws = NodeLink(hub, node_entry, None), FakeTransport()
    node.on_ws_connected(node_ws)  # type: ignore[arg-type]
    client, client_ws = SessionLink(hub, session_entry, None), FakeTransport()
    client.on_ws_connected(client_ws)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the spawned node_link_up
    return Relay(hub, events, node, node_ws, client, client_ws)


def feed(link: NodeLink | SessionLink, frame: FakeFrame) -> None:
    link.on_ws_frame(link.transport, frame)  # type: ignore[arg-type]


async def test_both_ends_are_greeted_and_the_node_is_reported_up(relay: Relay) -> None:
    assert relay.node_ws.texts() == [
        {"type": "hello", "version": 1, "node_id": "n_1", "heartbeat_interval_s": 15.0}
    ]
    assert relay.client_ws.texts() == [
        {"type": "hello", "version": 1, "session_id": "s_1", "channel": CHANNEL}
    ]
    assert relay.events.ups == ["n_1"]
    assert relay.hub.is_node_connected("n_1")


async def test_a_datagram_crosses_unchanged_and_is_counted(relay: Relay) -> None:
    up = encode_data(CHANNEL, [b"\x01handshake"])
    feed(relay.client, FakeFrame(up))
    assert relay.node_ws.binaries() == [up]
    down = encode_data(CHANNEL, [b"\x02reply"])
    feed(relay.node, FakeFrame(down))
    assert relay.client_ws.binaries() == [down]
    assert relay.hub.session_counters("s_1") == (2, len(up) + len(down))


async def test_frames_that_arrive_together_leave_in_one_write(relay: Relay) -> None:
    frames = [encode_data(CHANNEL, [bytes([i + 1]) * 100]) for i in range(3)]
    for i, frame in enumerate(frames):
        feed(relay.client, FakeFrame(frame, last_in_buffer=i == len(frames) - 1))
    assert relay.node_ws.binaries() == []  # not one send per frame …
    (written,) = relay.node_ws.underlying_transport.written  # … one write for all
    assert written == b"".join(b"\x82" + bytes([len(f)]) + f for f in frames)


async def test_a_client_cannot_send_on_another_channel(relay: Relay) -> None:
    feed(relay.client, FakeFrame(encode_data(CHANNEL + 1, [b"\x04injected"])))
    assert relay.node_ws.binaries() == []
    assert relay.dropped(DropReason.WRONG_CHANNEL) == 1


async def test_node_frames_for_unknown_and_just_closed_channels_are_told_apart(
    relay: Relay,
) -> None:
    feed(relay.node, FakeFrame(encode_data(99, [b"x"])))
    assert relay.dropped(DropReason.WRONG_CHANNEL) == 1
    relay.hub.close_session("s_1", "expired")
    feed(relay.node, FakeFrame(encode_data(CHANNEL, [b"late"])))
    assert relay.dropped(DropReason.SESSION_CLOSED) == 1


async def test_malformed_frames_are_counted_and_the_link_stays(relay: Relay) -> None:
    feed(relay.client, FakeFrame(b"\x01\x00\x00\x00\x07\x00\x09short"))  # record overruns
    feed(relay.client, FakeFrame(b"\x07junk-type"))
    assert relay.dropped(DropReason.MALFORMED) == 1
    assert relay.dropped(DropReason.UNKNOWN_TYPE) == 1
    assert relay.client_ws.closed_with is None
    good = encode_data(CHANNEL, [b"\x04ok"])
    feed(relay.client, FakeFrame(good))
    assert relay.node_ws.binaries() == [good]


async def test_without_a_node_link_client_frames_have_no_peer(relay: Relay) -> None:
    relay.node.on_ws_disconnected(relay.node_ws)  # type: ignore[arg-type]
    assert not relay.hub.is_node_connected("n_1")
    feed(relay.client, FakeFrame(encode_data(CHANNEL, [b"\x04data"])))
    assert relay.dropped(DropReason.NO_PEER) == 1
    assert relay.client_ws.closed_with is None  # kept open until the node is back


async def test_a_full_node_link_pauses_reading_its_clients(relay: Relay) -> None:
    relay.node.pause_writing()
    assert not relay.client_ws.underlying_transport.reading
    relay.node.resume_writing()
    assert relay.client_ws.underlying_transport.reading


async def test_node_text_reaches_the_services_as_json(relay: Relay) -> None:
    feed(relay.node, FakeFrame(b'{"type":"peer_stats","peers":[]}', WSMsgType.TEXT))
    feed(relay.node, FakeFrame(b"not json", WSMsgType.TEXT))
    await asyncio.sleep(0)
    assert relay.events.messages == [("n_1", {"type": "peer_stats", "peers": []})]
    assert relay.dropped(DropReason.MALFORMED) == 1


async def test_closing_a_session_tells_the_client_why_then_closes_with_4002(
    relay: Relay,
) -> None:
    relay.hub.close_session("s_1", "expired")
    assert relay.client_ws.texts()[-1] == {"type": "session_closed", "reason": "expired"}
    assert relay.client_ws.closed_with == (CloseCode.SESSION_CLOSED, b"expired")


async def test_a_node_gone_for_good_closes_its_client_links_with_4009(relay: Relay) -> None:
    relay.hub.node_offline("n_1", "node stopped")
    assert relay.client_ws.closed_with == (CloseCode.NODE_OFFLINE, b"node stopped")
    assert relay.node_ws.closed_with is None  # the node's own link is forget_node's business


async def test_forgetting_a_node_closes_its_link_with_4001(relay: Relay) -> None:
    relay.hub.forget_node("n_1", "stopped")
    assert relay.node_ws.closed_with == (CloseCode.UNAUTHORIZED, b"stopped")
