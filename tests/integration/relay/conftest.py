"""A real relay hub on loopback, real WebSocket clients, and the helpers the tests share."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from prometheus_client import CollectorRegistry

from higgs.common.secrets import hash_token, new_token
from higgs.protocol.relay import PROTOCOL_VERSION, VERSION_HEADER
from higgs.server.relay.hub import RelayHubServer


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    # The relay runs on uvloop in production; test it there.
    return {"uvloop": uvloop.new_event_loop}


@dataclass
class RecordingEvents:
    """The server's side of the seam, recording what the hub reports."""

    ups: list[str] = field(default_factory=list)
    downs: list[str] = field(default_factory=list)
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    activity: list[str] = field(default_factory=list)

    async def node_link_up(self, node_id: str) -> None:
        self.ups.append(node_id)

    async def node_link_down(self, node_id: str) -> None:
        self.downs.append(node_id)

    async def node_message(self, node_id: str, message: dict[str, Any]) -> None:
        self.messages.append((node_id, message))

    def session_activity(self, session_id: str) -> None:
        self.activity.append(session_id)


@dataclass
class Relay:
    hub: RelayHubServer
    events: RecordingEvents
    registry: CollectorRegistry
    host: str
    port: int

    @property
    def node_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/relay/node"

    @property
    def session_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/relay/session"

    def add_node(self, node_id: str) -> str:
        token = new_token("hgn_")
        self.hub.allow_node(node_id, hash_token(token))
        return token

    def add_session(self, session_id: str, channel: int, node_id: str) -> str:
        token = new_token("hgr_")
        self.hub.open_session(session_id, channel, node_id, hash_token(token))
        return token

    def dropped(self, reason: str) -> float:
        value = self.registry.get_sample_value("higgs_relay_dropped_total", {"reason": reason})
        return value or 0.0

    def datagrams(self, direction: str) -> float:
        labels = {"direction": direction}
        return self.registry.get_sample_value("higgs_relay_datagrams_total", labels) or 0.0


async def start_relay(**options: Any) -> Relay:
    ssl_context = options.pop("ssl_context", None)
    events = RecordingEvents()
    registry = CollectorRegistry()
    hub = RelayHubServer(events, registry, **options)
    await hub.start("127.0.0.1", 0, ssl_context)
    return Relay(hub, events, registry, "127.0.0.1", hub.port)


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    r = await start_relay(ping_interval_s=0.2, dead_after_s=0.6, activity_interval_s=0.1)
    try:
        yield r
    finally:
        await r.hub.stop()


class RawClient(WSListener):
    """A bare WebSocket client for sending whatever bytes a test wants."""

    def __init__(self) -> None:
        self.binary: list[bytes] = []
        self.text: list[str] = []
        self.close_code: int | None = None
        self.transport: WSTransport | None = None
        self.closed = asyncio.Event()
        self.got = asyncio.Event()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            self.binary.append(frame.get_payload_as_bytes())
            self.got.set()
        elif frame.msg_type == WSMsgType.TEXT:
            self.text.append(frame.get_payload_as_utf8_text())
            self.got.set()
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())  # type: ignore[call-overload]
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed.set()

    def send(self, payload: bytes, *, fin: bool = True, kind: WSMsgType = WSMsgType.BINARY) -> None:
        assert self.transport is not None
        self.transport.send(kind, payload, fin)


async def raw_connect(
    url: str, token: str | None, *, version: str | None = str(PROTOCOL_VERSION), **kw: Any
) -> RawClient:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if version is not None:
        headers[VERSION_HEADER] = version
    _, client = await ws_connect(RawClient, url, extra_headers=headers, **kw)
    assert isinstance(client, RawClient)
    return client


async def eventually(predicate: Any, limit_s: float = 5.0) -> None:
    """Waits until ``predicate()`` is true; the bound only keeps a broken test from hanging."""
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - polling hub state that has no event
            await asyncio.sleep(0.01)


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP socket standing in for a WireGuard port; collects what it receives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> UdpPeer:
        loop = asyncio.get_running_loop()
        transport, peer = await loop.create_datagram_endpoint(cls, local_addr=("127.0.0.1", 0))
        peer.transport = transport
        return peer

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def recv(self) -> tuple[bytes, tuple[str, int]]:
        async with asyncio.timeout(5):
            return await self.queue.get()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def public_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()
