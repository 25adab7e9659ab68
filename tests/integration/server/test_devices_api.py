"""The device endpoints (issue 18): a device's session outlives the sweep and its node's
deregistration, revoking it removes the peer, and bad requests are 4xx naming the field."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.server.conftest import Harness, bearer, new_public_key


async def _device(srv: Harness, token: str, name: str, **more: Any) -> Any:
    body = {"name": name, "public_key": new_public_key(), **more}
    return await srv.http.post("/v1/devices", json=body, headers=bearer(token))


async def _list(srv: Harness, token: str) -> dict[str, Any]:
    r = await srv.http.get("/v1/devices", headers=bearer(token))
    assert r.status_code == 200, r.text
    return {d["name"]: d for d in r.json()["devices"]}


@pytest.mark.parametrize("settings_overrides", [{"session_ttl_s": 1}])
async def test_a_device_lasts_until_revoked(srv: Harness) -> None:
    node_id, node_token, _ = await srv.node()
    srv.hub.connected.add(node_id)
    alice = await srv.client_token("alice")
    r = await _device(srv, alice, "phone")
    assert r.status_code == 201, r.text
    created = r.json()
    device = created["device"]
    assert (device["state"], device["path"]) == ("active", "direct")
    assert device["endpoint"] == "127.0.0.1:51820"
    assert created["wireguard"]["address"] == device["address"]
    (add,) = srv.hub.messages(node_id, "peer_add")
    assert add["public_key"] == device["public_key"]

    await asyncio.sleep(2.5)  # more than the session lifetime, several sweeps
    assert (await _list(srv, alice))["phone"]["state"] == "active"
    assert not srv.hub.messages(node_id, "peer_remove")

    # The node stops (a restart): the device waits for it instead of closing.
    r = await srv.http.delete(f"/v1/nodes/{node_id}", headers=bearer(node_token))
    assert r.status_code == 204, r.text
    assert (await _list(srv, alice))["phone"]["state"] == "node_offline"
    assert not srv.hub.messages(node_id, "peer_remove")

    r = await srv.http.delete("/v1/devices/phone", headers=bearer(alice))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "revoked"
    (remove,) = srv.hub.messages(node_id, "peer_remove")
    assert remove["public_key"] == device["public_key"]
    assert "phone" not in await _list(srv, alice)
    r = await srv.http.get(
        "/v1/admin/devices", params={"revoked": "true"}, headers=bearer(srv.admin_token)
    )
    (row,) = r.json()["devices"]
    assert (row["client"], row["close_reason"]) == ("alice", "device_revoked")


@pytest.mark.parametrize("settings_overrides", [{"max_devices_per_client": 1}])
async def test_names_limit_and_bad_requests(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    srv.hub.connected.add(node_id)
    bob = await srv.client_token("bob")
    assert (await _device(srv, bob, "phone")).status_code == 201

    r = await _device(srv, bob, "phone")
    assert (r.status_code, r.json()["error"]) == (409, "device_exists")
    assert "revoke it first" in r.json()["message"]
    r = await _device(srv, bob, "phone", replace=True)
    assert r.status_code == 201, r.text
    r = await _device(srv, bob, "laptop")
    assert (r.status_code, r.json()["error"]) == (409, "device_limit")
    assert "(1)" in r.json()["message"]

    r = await _device(srv, bob, "no spaces")
    assert r.status_code == 422
    assert "name" in r.json()["message"]
    r = await srv.http.post(
        "/v1/devices", json={"name": "x", "public_key": "nope"}, headers=bearer(bob)
    )
    assert r.status_code == 422
    assert "public_key" in r.json()["message"]
    r = await srv.http.post("/v1/devices", json={"name": "x", "public_key": new_public_key()})
    assert r.status_code == 401
    r = await srv.http.delete("/v1/devices/tablet", headers=bearer(bob))
    assert (r.status_code, r.json()["error"]) == (404, "device_not_found")
    r = await srv.http.delete(
        "/v1/admin/devices/d_0000000000000000", headers=bearer(srv.admin_token)
    )
    assert (r.status_code, r.json()["error"]) == (404, "device_not_found")
    r = await srv.http.get("/v1/admin/devices", headers=bearer(bob))
    assert r.status_code == 401


async def test_no_device_without_a_stable_endpoint(srv: Harness) -> None:
    node_id, _, _ = await srv.node(endpoint=None)  # no direct endpoint, and no UDP relay
    srv.hub.connected.add(node_id)
    carol = await srv.client_token("carol")
    r = await _device(srv, carol, "phone")
    assert r.status_code == 503
    assert r.json()["message"]


async def test_revoking_the_account_revokes_its_devices(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    srv.hub.connected.add(node_id)
    dave = await srv.client_token("dave")
    key = (await _device(srv, dave, "phone")).json()["device"]["public_key"]
    r = await srv.http.delete("/v1/admin/clients/dave", headers=bearer(srv.admin_token))
    assert r.status_code == 200, r.text
    (remove,) = srv.hub.messages(node_id, "peer_remove")
    assert remove["public_key"] == key
