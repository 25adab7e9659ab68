"""The server with the real relay hub: what REST does reaches the node and the client links.

Real WebSockets on loopback (the transport's RelayLink, as node and client use it), on SQLite
and PostgreSQL: registration admits the node's link, a route sends ``peer_add`` and admits the
client's relay token to exactly its channel, datagrams flow both ways, closing a session removes
the peer and closes the client link with 4002, deregistration closes the node link with 4001.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from higgs.common.backoff import Backoff
from higgs.protocol.relay import CloseCode
from higgs.server.app import BosonServer, running_server
from higgs.transport.relay_link import RelayLink
from tests.integration.server.conftest import bearer, make_settings, new_public_key, node_body


@dataclass
class Peer:
    """One end of a relay link, recording what arrives."""

    url: str
    token: str
    texts: list[dict[str, Any]] = field(default_factory=list)
    data: list[tuple[int, bytes]] = field(default_factory=list)
    link: RelayLink | None = None

    def start(self) -> RelayLink:
        self.link = RelayLink(
            self.url,
            self.token,
            on_data=lambda ch, dgs: self.data.extend((ch, bytes(d)) for d in dgs),
            on_text=self.texts.append,
            backoff=Backoff(initial=0.05, maximum=0.2),
        )
        self.link.start()
        return self.link

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.texts if m.get("type") == kind]


async def until(check: Callable[[], bool | Awaitable[bool]]) -> None:
    """Polls until ``check`` holds; fails after 10 s (a bound, not a timing assertion)."""
    for _ in range(200):
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met within 10 s")


@pytest.fixture
async def real(
    tmp_path: Path, database: str | None
) -> AsyncIterator[tuple[BosonServer, httpx.AsyncClient]]:
    settings = make_settings(tmp_path, database, relay_ping_interval_s=0.5, relay_dead_after_s=2)
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.api_url, timeout=10) as http,
    ):
        yield server, http


async def test_rest_drives_the_relay(real: tuple[BosonServer, httpx.AsyncClient]) -> None:
    server, http = real
    assert server.ctx is not None
    enroll = await server.ctx.identity.create_enrollment_key(1)
    reg = (await http.post("/v1/nodes/register", json=node_body(), headers=bearer(enroll))).json()
    node = Peer(reg["relay_url"], reg["node_token"])
    node_link = node.start()
    await until(lambda: bool(node.of_type("sync")))
    (hello,) = node.of_type("hello")
    assert hello["node_id"] == reg["node_id"]
    assert node.of_type("sync")[0]["peers"] == []
    admin = bearer(server.admin_token_path.read_text().strip())
    nodes = (await http.get("/v1/admin/nodes", headers=admin)).json()["nodes"]
    assert nodes[0]["connected"] is True

    client_token = await server.ctx.identity.add_client("alice")
    key = new_public_key()
    r = await http.post("/v1/routes", json={"client_public_key": key}, headers=bearer(client_token))
    assert r.status_code == 201, r.text
    route = r.json()
    channel = route["relay"]["channel"]
    await until(lambda: bool(node.of_type("peer_add")))
    (add,) = node.of_type("peer_add")
    assert add["channel"] == channel
    assert add["public_key"] == key
    assert add["address"] == route["wireguard"]["address"]

    client = Peer(route["relay"]["url"], route["relay"]["token"])
    client_link = client.start()
    await until(lambda: bool(client.of_type("hello")))
    assert client.of_type("hello")[0]["channel"] == channel

    client_link.send_datagrams(channel, [b"\x01handshake-initiation"])
    await until(lambda: bool(node.data))
    assert node.data == [(channel, b"\x01handshake-initiation")]
    node_link.send_datagrams(channel, [b"\x02response", b"\x04data"])
    await until(lambda: len(client.data) == 2)
    assert client.data == [(channel, b"\x02response"), (channel, b"\x04data")]
    # A channel that is not this client's is not forwarded to the node.
    client_link.send_datagrams(channel ^ 1, [b"\x04injected"])
    client_link.send_datagrams(channel, [b"\x04after"])
    await until(lambda: len(node.data) == 2)
    assert node.data[-1] == (channel, b"\x04after")

    sid = route["session_id"]
    info = (await http.get(f"/v1/sessions/{sid}", headers=bearer(client_token))).json()
    assert info["relay_datagrams"] >= 4
    metrics = (await http.get("/metrics")).text  # one registry: API and relay together
    assert 'higgs_relay_datagrams_total{direction="client_to_node"}' in metrics
    assert 'higgs_relay_dropped_total{reason="wrong_channel"} 1.0' in metrics
    assert "higgs_api_request_seconds_count" in metrics

    closed = await http.delete(f"/v1/sessions/{sid}", headers=bearer(client_token))
    assert closed.json()["state"] == "closed"
    result = await asyncio.wait_for(client_link.wait_closed(), 10)
    assert result.code == CloseCode.SESSION_CLOSED
    await until(lambda: bool(node.of_type("peer_remove")))
    assert node.of_type("peer_remove")[0]["session_id"] == sid

    gone = await http.delete(f"/v1/nodes/{reg['node_id']}", headers=bearer(reg["node_token"]))
    assert gone.status_code == 204
    result = await asyncio.wait_for(node_link.wait_closed(), 10)
    assert result.code == CloseCode.UNAUTHORIZED


async def test_reconnecting_node_gets_sync_and_wrong_tokens_are_refused(
    real: tuple[BosonServer, httpx.AsyncClient],
) -> None:
    server, http = real
    assert server.ctx is not None
    enroll = await server.ctx.identity.create_enrollment_key(1)
    reg = (await http.post("/v1/nodes/register", json=node_body(), headers=bearer(enroll))).json()
    client_token = await server.ctx.identity.add_client("alice")
    route = (
        await http.post(
            "/v1/routes", json={"client_public_key": new_public_key()}, headers=bearer(client_token)
        )
    ).json()
    # The node connects after the session was opened: sync carries it.
    node = Peer(reg["relay_url"], reg["node_token"])
    link = node.start()
    await until(lambda: bool(node.of_type("sync")))
    (peer,) = node.of_type("sync")[0]["peers"]
    assert peer["session_id"] == route["session_id"]
    assert peer["channel"] == route["relay"]["channel"]
    await link.close()

    # A client token, or a relay token, is not a node credential.
    for token in (client_token, route["relay"]["token"]):
        intruder = Peer(reg["relay_url"], token)
        result = await asyncio.wait_for(intruder.start().wait_closed(), 10)
        assert result.code == CloseCode.UNAUTHORIZED
        assert intruder.texts == []


async def test_a_deregistered_node_closes_its_client_links_with_4009(
    real: tuple[BosonServer, httpx.AsyncClient],
) -> None:
    server, http = real
    assert server.ctx is not None
    enroll = await server.ctx.identity.create_enrollment_key(1)
    reg = (await http.post("/v1/nodes/register", json=node_body(), headers=bearer(enroll))).json()
    client_token = await server.ctx.identity.add_client("alice")
    route = (
        await http.post(
            "/v1/routes", json={"client_public_key": new_public_key()}, headers=bearer(client_token)
        )
    ).json()
    texts: list[dict[str, Any]] = []
    downs: list[int | None] = []
    client_link = RelayLink(
        route["relay"]["url"],
        route["relay"]["token"],
        on_data=lambda _ch, _dgs: None,
        on_text=texts.append,
        # What the client's relay path reads when its link goes down (client/relay_path.py).
        on_state=lambda up: None if up else downs.append(client_link._close_code),
        backoff=Backoff(initial=0.05, maximum=0.2),
    )
    client_link.start()
    try:
        await until(lambda: any(t.get("type") == "hello" for t in texts))
        gone = await http.delete(f"/v1/nodes/{reg['node_id']}", headers=bearer(reg["node_token"]))
        assert gone.status_code == 204
        # The node is gone for good: the client hears 4009 and can fail over at once instead
        # of waiting for handshakes to time out (a reconnect then finds the session closed).
        await until(lambda: bool(downs))
        assert downs[0] == CloseCode.NODE_OFFLINE
    finally:
        await client_link.close()
