"""Time and events: expiry, renewal by traffic, offline detection, revocation, link sync,
restart. Waiting is done by polling with a deadline, never by asserting durations."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from higgs.common.secrets import hash_token
from higgs.server.store.sessions import close_open_sessions
from higgs.server.store.tables import Session as SessionRow
from tests.integration.server.conftest import (
    Harness,
    bearer,
    make_settings,
    new_public_key,
    start,
)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Polls ``check`` until it holds; fails after 10 s (a bound, not a timing assertion)."""
    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met within 10 s")


async def session_state(srv: Harness, client: str, sid: str) -> dict[str, Any]:
    r = await srv.http.get(f"/v1/sessions/{sid}", headers=bearer(client))
    data: dict[str, Any] = r.json()
    return data


@pytest.mark.stores
@pytest.mark.parametrize("settings_overrides", [{"session_ttl_s": 1}])
async def test_unused_session_expires_and_node_is_told(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    client = await srv.client_token("alice")
    sid = (await srv.route(client)).json()["session_id"]

    async def closed() -> bool:
        return bool((await session_state(srv, client, sid))["state"] == "closed")

    await eventually(closed)
    assert (await session_state(srv, client, sid))["close_reason"] == "expired"
    assert (sid, "expired") in srv.hub.closed
    (removed,) = srv.hub.messages(node_id, "peer_remove")
    assert removed["reason"] == "expired"


@pytest.mark.parametrize("settings_overrides", [{"session_ttl_s": 4}])
async def test_relay_activity_and_handshakes_keep_a_session_open(srv: Harness) -> None:
    node_id, node_token, _ = await srv.node()
    client = await srv.client_token("alice")
    key = new_public_key()
    relayed = (await srv.route(client)).json()["session_id"]
    direct = (await srv.route(client, client_public_key=key)).json()["session_id"]
    idle = (await srv.route(client)).json()["session_id"]
    srv.hub.connected.add(node_id)
    # Keep two sessions in use (relay traffic; fresh handshakes) until the idle one expired;
    # renewals come far more often than the TTL so that a slow machine cannot starve them.
    for _ in range(400):
        srv.hub.events.session_activity(relayed)
        await srv.hub.events.node_message(
            node_id,
            {
                "type": "peer_stats",
                "peers": [{"public_key": key, "rx_bytes": 1, "tx_bytes": 1, "last_handshake_s": 5}],
            },
        )
        if (await session_state(srv, client, idle))["state"] == "closed":
            break
        await asyncio.sleep(0.25)
    assert (await session_state(srv, client, relayed))["state"] == "open"
    assert (await session_state(srv, client, direct))["state"] == "open"
    assert (await session_state(srv, client, idle))["state"] == "closed"
    # A heartbeat's peer_stats renew as well.
    hb = {"peer_stats": [{"public_key": key, "last_handshake_s": 1}]}
    r = await srv.http.post(f"/v1/nodes/{node_id}/heartbeat", json=hb, headers=bearer(node_token))
    assert r.status_code == 200


async def test_malformed_or_unknown_control_messages_are_ignored(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    await srv.hub.events.node_message(node_id, {"type": "peer_stats", "peers": "garbage"})
    await srv.hub.events.node_message(node_id, {"type": "from_the_future", "x": 1})
    assert (await srv.http.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    "settings_overrides", [{"heartbeat_interval_s": 1, "missed_heartbeats": 1}]
)
async def test_node_goes_offline_after_missed_heartbeats_unless_linked(srv: Harness) -> None:
    silent, silent_token, _ = await srv.node(tunnel_subnet="10.77.1.0/24")
    linked, _, _ = await srv.node(tunnel_subnet="10.77.2.0/24")
    srv.hub.connected.add(linked)
    client = await srv.client_token("alice")

    async def silent_offline() -> bool:
        nodes = (await srv.http.get("/v1/admin/nodes", headers=bearer(srv.admin_token))).json()
        return bool({n["node_id"]: n["state"] for n in nodes["nodes"]}[silent] == "offline")

    await eventually(silent_offline)
    # Clients of the silent node are told 4009 (fail over); the linked one is left alone.
    assert srv.hub.offline == [(silent, "node offline: missed heartbeats")]
    listed = (await srv.http.get("/v1/nodes", headers=bearer(client))).json()["nodes"]
    assert [n["node_id"] for n in listed] == [linked]
    r = await srv.route(client, node_id=silent)
    assert r.status_code == 503
    assert "offline" in r.json()["message"]
    # A heartbeat brings it back.
    r = await srv.http.post(f"/v1/nodes/{silent}/heartbeat", json={}, headers=bearer(silent_token))
    assert r.json()["state"] == "online"
    assert (await srv.route(client, node_id=silent)).status_code == 201


async def test_revocation_closes_sessions_and_node_is_told(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    alice = await srv.client_token("alice")
    bob = await srv.client_token("bob")
    a1 = (await srv.route(alice)).json()["session_id"]
    a2 = (await srv.route(alice)).json()["session_id"]
    b1 = (await srv.route(bob)).json()["session_id"]
    # What `bosonserver client revoke alice` does: on the database only.
    client_id = await srv.ctx.identity.mark_revoked("alice")
    await close_open_sessions(srv.ctx.db, "client_revoked", SessionRow.client_id == client_id)
    assert (await srv.http.get("/v1/nodes", headers=bearer(alice))).status_code == 401

    async def announced() -> bool:
        return {a1, a2} <= {sid for sid, _ in srv.hub.closed}

    await eventually(announced)  # the running server's sweep tells hub and node
    removed = {m["session_id"]: m["reason"] for m in srv.hub.messages(node_id, "peer_remove")}
    assert removed == {a1: "client_revoked", a2: "client_revoked"}
    assert b1 in srv.hub.sessions
    r = await srv.http.get(f"/v1/sessions/{b1}", headers=bearer(bob))
    assert r.json()["state"] == "open"
    clients = (await srv.http.get("/v1/admin/clients", headers=bearer(srv.admin_token))).json()
    assert {c["name"]: c["revoked"] for c in clients["clients"]} == {"alice": True, "bob": False}


async def test_node_link_up_gets_sync_with_its_open_sessions(srv: Harness) -> None:
    node_id, _, _ = await srv.node(tunnel_subnet="10.77.1.0/24")
    other, _, _ = await srv.node(tunnel_subnet="10.77.2.0/24")
    client = await srv.client_token("alice")
    keep = (await srv.route(client, node_id=node_id)).json()
    gone = (await srv.route(client, node_id=node_id)).json()
    await srv.route(client, node_id=other)
    await srv.http.delete(f"/v1/sessions/{gone['session_id']}", headers=bearer(client))
    srv.hub.connected.add(node_id)
    await srv.hub.events.node_link_up(node_id)
    (sync,) = srv.hub.messages(node_id, "sync")
    assert sync["peers"] == [
        {
            "session_id": keep["session_id"],
            "channel": keep["relay"]["channel"],
            "public_key": (await session_state(srv, client, keep["session_id"]))[
                "client_public_key"
            ],
            "address": keep["wireguard"]["address"],
            "relayed": True,
        }
    ]
    await srv.hub.events.node_link_down(node_id)


@pytest.mark.stores
async def test_restart_keeps_state(
    tmp_path: Path, database: str | None, hub_factory: tuple[list[Any], Any]
) -> None:
    settings = make_settings(tmp_path, database)
    async with start(settings, hub_factory) as first:
        node_id, node_token, _ = await first.node()
        client = await first.client_token("alice")
        route = (await first.route(client)).json()
        closed = (await first.route(client)).json()["session_id"]
        await first.http.delete(f"/v1/sessions/{closed}", headers=bearer(client))
        admin = first.admin_token
    async with start(settings, hub_factory) as second:
        assert second.server.new_admin_token is None
        assert second.admin_token == admin
        hub = second.hub
        assert hub.allowed == {node_id: hash_token(node_token)}
        sid = route["session_id"]
        assert hub.sessions == {
            sid: (route["relay"]["channel"], node_id, hash_token(route["relay"]["token"]))
        }
        r = await second.http.get(f"/v1/sessions/{sid}", headers=bearer(client))
        assert r.json()["state"] == "open"
        r = await second.http.get(f"/v1/sessions/{closed}", headers=bearer(client))
        assert r.json()["state"] == "closed"
        r = await second.http.post(
            f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(node_token)
        )
        assert r.status_code == 200
        # The closed session's address is free, the open one's is not.
        new = (await second.route(client)).json()
        assert new["wireguard"]["address"] != route["wireguard"]["address"]
        assert new["relay"]["channel"] != route["relay"]["channel"]


@pytest.mark.stores
async def test_close_racing_the_sweep_announces_once(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    client = await srv.client_token("alice")
    sids = [(await srv.route(client)).json()["session_id"] for _ in range(5)]
    for sid in sids:
        await asyncio.gather(
            srv.http.delete(f"/v1/sessions/{sid}", headers=bearer(client)),
            srv.ctx.sessions.reconcile(),
            srv.ctx.sessions.reconcile(),
        )
    removed = [m["session_id"] for m in srv.hub.messages(node_id, "peer_remove")]
    assert sorted(removed) == sorted(sids)
    assert sorted(sid for sid, _ in srv.hub.closed) == sorted(sids)
