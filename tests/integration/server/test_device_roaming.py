"""A direct device moves onto a UDP relay lease when its node loses its direct endpoint
(issue 18; services/device_roaming.py), on the real server and store: the node's peer_stats
record where the app is, the heartbeat that withdraws the mapping starts the clock, the
device gets a lease whose starting address is the app, the node a sync with the relay
endpoint for it, and the device reads relayed once the relay bound the app's leg."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from higgs.server.store import relay_leases
from tests.integration.server.conftest import Harness, bearer, new_public_key
from tests.integration.server.test_reachability import mapping, probe_nonce

pytestmark = pytest.mark.stores

RELAY = "192.0.2.1"
APP = "198.51.100.30:41641"
ROAMING = pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "udp_relay_address": RELAY,
            "udp_relay_ports": "40000-40009",
            "device_roam_after_s": 0.5,
            "sweep_interval_s": 0.2,
        }
    ],
)


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def _devices(srv: Harness, token: str) -> dict[str, dict[str, Any]]:
    r = await srv.http.get("/v1/devices", headers=bearer(token))
    assert r.status_code == 200, r.text
    return {d["name"]: d for d in r.json()["devices"]}


async def _peer_stats(srv: Harness, node_id: str, key: str, endpoint: str) -> None:
    peer = {"public_key": key, "rx_bytes": 10, "tx_bytes": 10, "last_handshake_s": 3}
    await srv.hub.events.node_message(
        node_id, {"type": "peer_stats", "peers": [{**peer, "endpoint": endpoint}]}
    )


async def _lease(srv: Harness) -> list[relay_leases.RelaySession]:
    async with srv.ctx.db.begin() as conn:
        return await relay_leases.relay_sessions(conn, RELAY)


@ROAMING
async def test_a_direct_device_gets_a_relay_lease_when_its_node_loses_the_endpoint(
    srv: Harness, udp: socket.socket
) -> None:
    node_id, token, _ = await srv.node(endpoint=None, port_mapping=mapping(udp))
    srv.hub.connected.add(node_id)
    url = f"/v1/nodes/{node_id}/reachability"
    nonce = await probe_nonce(udp)
    assert (await srv.http.post(url, json={"nonce": nonce}, headers=bearer(token))).is_success
    alice = await srv.client_token("alice")
    key = new_public_key()
    r = await srv.http.post(
        "/v1/devices", json={"name": "phone", "public_key": key}, headers=bearer(alice)
    )
    assert r.status_code == 201, r.text
    device = r.json()["device"]
    assert (device["path"], device["endpoint"]) == ("direct", mapping(udp)["external_endpoint"])
    await _peer_stats(srv, node_id, key, APP)  # the node sees the app at its public address
    await asyncio.sleep(1.0)  # several rounds: the endpoint is still the node's
    assert await _lease(srv) == []
    assert (await _devices(srv, alice))["phone"]["state"] == "active"

    # The mapping is gone: the heartbeat withdraws it.
    hb = await srv.http.post(
        f"/v1/nodes/{node_id}/heartbeat",
        json={"port_mapping": mapping(None)},
        headers=bearer(token),
    )
    assert hb.status_code == 200, hb.text
    assert (await _devices(srv, alice))["phone"]["state"] == "endpoint_lost"
    for _ in range(50):  # the lease commits, then the node is sent its sync
        leases, syncs = await _lease(srv), srv.hub.messages(node_id, "sync")
        if leases and syncs:
            break
        await asyncio.sleep(0.1)
    (lease,) = leases
    assert lease.client_start == APP  # the relay sends the node's handshakes to the app
    assert (lease.client_public_key, lease.client_seen) == (key, None)
    relay_endpoint = f"{RELAY}:{lease.port}"
    (peer,) = [p for p in syncs[-1]["peers"] if p["public_key"] == key]
    assert peer["relay_endpoint"] == relay_endpoint
    assert (await _devices(srv, alice))["phone"]["state"] == "endpoint_lost"  # not bound yet

    # Where the app now is, as the node reports it (the relay), is not its starting address.
    await _peer_stats(srv, node_id, key, relay_endpoint)
    assert (await _lease(srv))[0].client_start == APP

    # The relay binds the app's leg (it answered the node's initiation from APP).
    async with srv.ctx.db.begin() as conn:
        await relay_leases.record_legs(
            conn, RELAY, {lease.port: (APP, "203.0.113.11:51820")}, device_created(device)
        )
    listed = (await _devices(srv, alice))["phone"]
    assert (listed["state"], listed["endpoint"], listed["path"]) == (
        "relayed",
        device["endpoint"],
        "direct",
    )
    await asyncio.sleep(0.5)
    assert len(await _lease(srv)) == 1  # one lease for as long as the device exists

    r = await srv.http.delete("/v1/devices/phone", headers=bearer(alice))
    assert r.status_code == 200, r.text
    assert await _lease(srv) == []


def device_created(device: dict[str, Any]) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(device["created_at"])


@ROAMING
async def test_a_device_whose_app_was_never_seen_stays_endpoint_lost(
    srv: Harness, udp: socket.socket
) -> None:
    node_id, token, _ = await srv.node(endpoint=None, port_mapping=mapping(udp))
    srv.hub.connected.add(node_id)
    nonce = await probe_nonce(udp)
    url = f"/v1/nodes/{node_id}/reachability"
    assert (await srv.http.post(url, json={"nonce": nonce}, headers=bearer(token))).is_success
    bob = await srv.client_token("bob")
    r = await srv.http.post(
        "/v1/devices", json={"name": "tab", "public_key": new_public_key()}, headers=bearer(bob)
    )
    assert r.status_code == 201, r.text
    hb = await srv.http.post(
        f"/v1/nodes/{node_id}/heartbeat",
        json={"port_mapping": mapping(None)},
        headers=bearer(token),
    )
    assert hb.status_code == 200, hb.text
    await asyncio.sleep(1.5)
    assert await _lease(srv) == []  # the relay could not reach an app it never saw
    assert (await _devices(srv, bob))["tab"]["state"] == "endpoint_lost"
