"""Usage per client per month from heartbeats' peer counters, the quota, the pause switch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from higgs.server.services.clock import utcnow
from higgs.server.services.usage import QUOTA_OK_S, month_of
from higgs.server.store import usage as usage_sql
from tests.integration.server.conftest import Harness, bearer, new_public_key


async def _heartbeat(srv: Harness, node_id: str, token: str, **body: Any) -> None:
    r = await srv.http.post(f"/v1/nodes/{node_id}/heartbeat", json=body, headers=bearer(token))
    assert r.status_code == 200, r.text


async def _clients(srv: Harness) -> dict[str, dict[str, Any]]:
    r = await srv.http.get("/v1/admin/clients", headers=bearer(srv.admin_token))
    assert r.status_code == 200, r.text
    return {c["name"]: c for c in r.json()["clients"]}


@pytest.mark.stores
async def test_usage_adds_per_session_deltas_and_a_used_up_quota_cuts_off(srv: Harness) -> None:
    node_id, node_token, _ = await srv.node()
    srv.hub.connected.add(node_id)
    alice = await srv.client_token("alice")
    key = new_public_key()
    r = await srv.route(alice, client_public_key=key)
    assert r.status_code == 201, r.text
    session_id = r.json()["session_id"]

    peer = {"public_key": key, "rx_bytes": 1000, "tx_bytes": 3000, "last_handshake_s": 1}
    await _heartbeat(srv, node_id, node_token, peer_stats=[peer])
    # Counters are cumulative: only the growth since the last report counts.
    await _heartbeat(srv, node_id, node_token, peer_stats=[{**peer, "rx_bytes": 1500}])
    a = (await _clients(srv))["alice"]
    assert (a["rx_bytes"], a["tx_bytes"], a["quota_bytes"]) == (1500, 3000, None)
    assert a["month"]
    assert len(a["month"]) == 7

    r = await srv.http.put(
        "/v1/admin/clients/alice/quota", json={"quota_bytes": 5000}, headers=bearer(srv.admin_token)
    )
    assert r.status_code == 204, r.text
    assert (await srv.route(alice)).status_code == 201  # 4500 of 5000: still allowed
    # A peer re-created on the node counts from zero: 600 more, over the quota.
    await _heartbeat(
        srv, node_id, node_token, peer_stats=[{**peer, "rx_bytes": 100, "tx_bytes": 500}]
    )
    a = (await _clients(srv))["alice"]
    assert a["rx_bytes"] + a["tx_bytes"] == 5100
    info = await srv.http.get(f"/v1/sessions/{session_id}", headers=bearer(alice))
    assert (info.json()["state"], info.json()["close_reason"]) == ("closed", "quota_exceeded")
    assert a["open_sessions"] == 0  # every session of the client closed, not only the one

    refused = await srv.route(alice)
    assert refused.status_code == 403
    assert refused.json()["error"] == "quota_exceeded"
    assert "monthly quota" in refused.json()["message"]
    # Raising the quota lets the client back in.
    r = await srv.http.put(
        "/v1/admin/clients/alice/quota", json={"quota_bytes": None}, headers=bearer(srv.admin_token)
    )
    assert r.status_code == 204
    assert (await srv.route(alice)).status_code == 201
    metrics = (await srv.http.get("/metrics")).text
    assert 'higgs_usage_bytes_total{direction="from_clients"} 1600.0' in metrics
    assert "higgs_quota_closes_total 1.0" in metrics


async def test_quota_of_an_unknown_client_is_a_404(srv: Harness) -> None:
    r = await srv.http.put(
        "/v1/admin/clients/nobody/quota", json={"quota_bytes": 1}, headers=bearer(srv.admin_token)
    )
    assert r.status_code == 404
    assert r.json()["error"] == "client_not_found"
    r = await srv.http.put(
        "/v1/admin/clients/nobody/quota", json={"quota_bytes": -1}, headers=bearer(srv.admin_token)
    )
    assert r.status_code == 422


async def test_a_paused_node_gets_no_new_session_and_keeps_its_open_ones(srv: Harness) -> None:
    node_id, node_token, _ = await srv.node()
    srv.hub.connected.add(node_id)
    alice = await srv.client_token("alice")
    first = await srv.route(alice)
    assert first.status_code == 201
    await _heartbeat(srv, node_id, node_token, paused=True)
    r = await srv.route(alice)
    assert r.status_code == 503, r.text
    r = await srv.route(alice, node_id=node_id)
    assert r.status_code in (409, 503)
    assert "paused" in r.json()["message"]
    info = await srv.http.get(f"/v1/sessions/{first.json()['session_id']}", headers=bearer(alice))
    assert info.json()["state"] == "open"  # drains
    await _heartbeat(srv, node_id, node_token, paused=False)
    assert (await srv.route(alice)).status_code == 201


async def test_a_used_up_quota_refuses_routes_and_devices_alike(srv: Harness) -> None:
    """One gate (deps.ClientWithinQuota) for everything that opens a session: the same 403
    with the same message, after the client's own authentication."""
    node_id, node_token, _ = await srv.node()
    srv.hub.connected.add(node_id)
    alice = await srv.client_token("alice")
    key = new_public_key()
    assert (await srv.route(alice, client_public_key=key)).status_code == 201
    r = await srv.http.put(
        "/v1/admin/clients/alice/quota", json={"quota_bytes": 1000}, headers=bearer(srv.admin_token)
    )
    assert r.status_code == 204
    peer = {"public_key": key, "rx_bytes": 800, "tx_bytes": 800, "last_handshake_s": 1}
    await _heartbeat(srv, node_id, node_token, peer_stats=[peer])
    route = await srv.route(alice)
    device = await srv.http.post(
        "/v1/devices", json={"name": "phone", "public_key": new_public_key()},
        headers=bearer(alice),
    )  # fmt: skip
    for refused in (route, device):
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "quota_exceeded"
    assert route.json()["message"] == device.json()["message"]
    # Authentication still comes first: a bad token is a 401, whatever the quota.
    r = await srv.http.post("/v1/routes", json={"client_public_key": key}, headers=bearer("hgc_x"))
    assert r.status_code == 401
    # Listing is not opening: an account over its quota still sees its devices.
    assert (await srv.http.get("/v1/devices", headers=bearer(alice))).status_code == 200


async def test_a_quota_used_up_elsewhere_refuses_routes_here_within_a_second(
    srv: Harness,
) -> None:
    """A "within its quota" answer is believed for QUOTA_OK_S (usage.py): usage counted by
    another instance (written here straight into the table, as that instance would) refuses
    this instance's next route within that bound."""
    node_id, _, _ = await srv.node()
    srv.hub.connected.add(node_id)
    alice = await srv.client_token("alice")
    r = await srv.http.put(
        "/v1/admin/clients/alice/quota", json={"quota_bytes": 1000}, headers=bearer(srv.admin_token)
    )
    assert r.status_code == 204
    key = new_public_key()  # one key: each route replaces the session before
    assert (await srv.route(alice, client_public_key=key)).status_code == 201  # believed from now
    client = await srv.ctx.identity.authenticate_client(alice)
    async with srv.ctx.db.begin() as conn:
        await usage_sql.add_usage(conn, month_of(utcnow()), {client.id: (600, 600)})
    deadline = time.monotonic() + QUOTA_OK_S + 0.5
    while (answer := await srv.route(alice, client_public_key=key)).status_code == 201:
        assert time.monotonic() < deadline, "a used-up quota still let routes through"
        await asyncio.sleep(0.1)
    assert answer.status_code == 403
    assert answer.json()["error"] == "quota_exceeded"
