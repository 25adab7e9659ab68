"""The server verifies a node's port mapping before offering it (protocol.md §2.5): real probe
datagrams to an endpoint on loopback, the nonce posted back, route answers before and after."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest

from higgs.protocol.reachability import decode_probe
from tests.integration.server.conftest import Harness, bearer


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def probe_nonce(sock: socket.socket) -> str:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
    return decode_probe(data).hex()


def mapping(sock: socket.socket | None) -> dict[str, object]:
    if sock is None:
        return {"method": None, "reason": "pcp: port_unreachable"}
    port = sock.getsockname()[1]
    return {"method": "pcp", "external_endpoint": f"127.0.0.1:{port}", "lifetime_s": 600}


async def test_a_mapping_is_offered_only_once_its_probe_came_back(
    srv: Harness, udp: socket.socket
) -> None:
    node_id, token, _ = await srv.node(endpoint=None, port_mapping=mapping(udp))
    srv.hub.connected.add(node_id)
    client = await srv.client_token("alice")
    endpoint = mapping(udp)["external_endpoint"]

    r = await srv.route(client, mode="direct")
    assert r.status_code == 503, r.text  # not verified yet
    assert "no direct endpoint" in r.json()["message"]

    nonce = await probe_nonce(udp)
    url = f"/v1/nodes/{node_id}/reachability"
    wrong = await srv.http.post(url, json={"nonce": "0" * 32}, headers=bearer(token))
    assert wrong.status_code == 409
    assert wrong.json()["error"] == "stale_nonce"
    bad = await srv.http.post(url, json={"nonce": "xyz"}, headers=bearer(token))
    assert bad.status_code == 422
    assert "nonce" in bad.json()["message"]
    ok = await srv.http.post(url, json={"nonce": nonce}, headers=bearer(token))
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"verified": True, "endpoint": endpoint}

    r = await srv.route(client, mode="direct")
    assert r.status_code == 201, r.text
    assert r.json()["direct"]["endpoint"] == endpoint
    nodes = (await srv.http.get("/v1/nodes", headers=bearer(client))).json()["nodes"]
    assert nodes[0]["direct"] is True


async def test_a_heartbeat_with_another_mapping_withdraws_the_old_one(
    srv: Harness, udp: socket.socket
) -> None:
    node_id, token, _ = await srv.node(endpoint=None, port_mapping=mapping(udp))
    srv.hub.connected.add(node_id)
    client = await srv.client_token("alice")
    url = f"/v1/nodes/{node_id}/reachability"
    nonce = await probe_nonce(udp)
    assert (await srv.http.post(url, json={"nonce": nonce}, headers=bearer(token))).is_success

    async def heartbeat(pm: dict[str, object]) -> None:
        r = await srv.http.post(
            f"/v1/nodes/{node_id}/heartbeat", json={"port_mapping": pm}, headers=bearer(token)
        )
        assert r.status_code == 200, r.text

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", 0))
        other.setblocking(False)
        await heartbeat(mapping(other))
        assert (await srv.route(client, mode="direct")).status_code == 503
        # The old nonce no longer verifies anything; the new probe's does.
        stale = await srv.http.post(url, json={"nonce": nonce}, headers=bearer(token))
        assert stale.status_code == 409
        fresh = await probe_nonce(other)
        assert (await srv.http.post(url, json={"nonce": fresh}, headers=bearer(token))).is_success
        r = await srv.route(client, mode="direct")
        assert r.json()["direct"]["endpoint"] == mapping(other)["external_endpoint"]
    # The same report again changes nothing; losing the mapping withdraws it.
    await heartbeat(mapping(None))
    assert (await srv.route(client, mode="direct")).status_code == 503


async def test_a_manual_endpoint_wins_without_a_probe(srv: Harness, udp: socket.socket) -> None:
    node_id, _, _ = await srv.node(endpoint="203.0.113.7:51820", port_mapping=mapping(udp))
    srv.hub.connected.add(node_id)
    client = await srv.client_token("alice")
    r = await srv.route(client, mode="direct")
    assert r.status_code == 201, r.text
    assert r.json()["direct"]["endpoint"] == "203.0.113.7:51820"


async def test_a_node_cannot_confirm_for_another(srv: Harness, udp: socket.socket) -> None:
    node_id, _, _ = await srv.node(endpoint=None, port_mapping=mapping(udp))
    _, other_token, _ = await srv.node()
    nonce = await probe_nonce(udp)
    r = await srv.http.post(
        f"/v1/nodes/{node_id}/reachability", json={"nonce": nonce}, headers=bearer(other_token)
    )
    assert r.status_code == 403


async def test_a_heartbeat_from_a_new_address_verifies_the_mapping_again(
    srv: Harness, udp: socket.socket
) -> None:
    """The node's public address changed but it still reports the mapping it had: the server
    stops offering it until a new probe reaches the node through it."""
    node_id, token, _ = await srv.node(endpoint=None, port_mapping=mapping(udp))
    srv.hub.connected.add(node_id)
    client = await srv.client_token("alice")
    url = f"/v1/nodes/{node_id}/reachability"
    nonce = await probe_nonce(udp)
    assert (await srv.http.post(url, json={"nonce": nonce}, headers=bearer(token))).is_success
    body = {"port_mapping": mapping(udp)}
    beat = f"/v1/nodes/{node_id}/heartbeat"
    assert (await srv.http.post(beat, json=body, headers=bearer(token))).is_success
    assert (await srv.route(client, mode="direct")).status_code == 201  # same address: kept

    moved = httpx.AsyncClient(
        base_url=str(srv.http.base_url),
        transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"),
        timeout=10,
    )
    async with moved:
        r = await moved.post(beat, json=body, headers=bearer(token))
        assert r.status_code == 200, r.text
    r = await srv.route(client, mode="direct")
    assert r.status_code == 503, r.text  # withdrawn at once
    stale = await srv.http.post(url, json={"nonce": nonce}, headers=bearer(token))
    assert stale.status_code == 409
    fresh = await probe_nonce(udp)  # probed again: it still reaches the node
    assert (await srv.http.post(url, json={"nonce": fresh}, headers=bearer(token))).is_success
    r = await srv.route(client, mode="direct")
    assert r.json()["direct"]["endpoint"] == mapping(udp)["external_endpoint"]
