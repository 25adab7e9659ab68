"""UDP relay port leases on the real server (SQLite and PostgreSQL): leased at open, carried
in the route answer and the node's peer_add, released by close, not reused in the cooldown."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from higgs.server.services.clock import utcnow
from higgs.server.store import relay_leases
from higgs.server.store.sessions import session_by_id
from tests.integration.server.conftest import Harness, bearer

# Port leases are rows allocated, released and cooled down by SQL: the store is under test.
pytestmark = pytest.mark.stores

RELAY = "192.0.2.1"

LONG_COOLDOWN = pytest.mark.parametrize(
    "settings_overrides",
    [{"udp_relay_address": RELAY, "udp_relay_ports": "40000-40002", "udp_relay_cooldown_s": 600}],
)


@LONG_COOLDOWN
async def test_sessions_lease_distinct_ports_until_the_range_is_used_up(srv: Harness) -> None:
    node_id, _, body = await srv.node(endpoint=None)  # behind a NAT: no direct endpoint
    client = await srv.client_token("alice")
    answers: list[dict[str, Any]] = []
    for _ in range(4):
        r = await srv.route(client)
        assert r.status_code == 201, r.text
        answers.append(r.json())
    endpoints = [a["udp_relay"] and a["udp_relay"]["endpoint"] for a in answers]
    assert endpoints[:3] == [f"{RELAY}:40000", f"{RELAY}:40001", f"{RELAY}:40002"]
    assert endpoints[3] is None  # all busy: the session still has its WebSocket relay path
    assert answers[3]["relay"]["token"].startswith("hgr_")

    # The node is told the relay endpoint for each peer (it has no verified endpoint).
    adds = srv.hub.messages(node_id, "peer_add")
    assert [m.get("relay_endpoint") for m in adds] == [*endpoints[:3], None]

    # The relay reads the open sessions with both public keys.
    assert srv.server.ctx is not None
    async with srv.server.ctx.db.begin() as conn:
        served = await relay_leases.relay_sessions(conn, RELAY)
    assert sorted(s.port for s in served) == [40000, 40001, 40002]
    assert {s.node_public_key for s in served} == {body["public_key"]}
    assert all(len(base64.b64decode(s.client_public_key)) == 32 for s in served)

    # Close releases; the port is not reused while its cooldown runs.
    closed = await srv.http.delete(
        f"/v1/sessions/{answers[0]['session_id']}", headers=bearer(client)
    )
    assert closed.status_code == 200
    assert srv.server.ctx is not None
    async with srv.server.ctx.db.begin() as conn:
        served = await relay_leases.relay_sessions(conn, RELAY)
    assert sorted(s.port for s in served) == [40001, 40002]
    r = await srv.route(client)
    assert r.json()["udp_relay"] is None


@pytest.mark.parametrize(
    "settings_overrides",
    [{"udp_relay_address": RELAY, "udp_relay_ports": "40000-40001", "udp_relay_cooldown_s": 0}],
)
async def test_a_released_port_is_leased_again_after_its_cooldown(srv: Harness) -> None:
    await srv.node(endpoint=None)
    client = await srv.client_token("alice")
    first = (await srv.route(client)).json()
    second = (await srv.route(client)).json()
    assert {first["udp_relay"]["endpoint"], second["udp_relay"]["endpoint"]} == {
        f"{RELAY}:40000",
        f"{RELAY}:40001",
    }
    await srv.http.delete(f"/v1/sessions/{first['session_id']}", headers=bearer(client))
    third = (await srv.route(client)).json()
    assert third["udp_relay"]["endpoint"] == first["udp_relay"]["endpoint"]


@LONG_COOLDOWN
async def test_a_node_with_an_endpoint_keeps_it_and_direct_mode_leases_nothing(
    srv: Harness,
) -> None:
    node_id, _, _ = await srv.node()  # has a verified endpoint
    client = await srv.client_token("alice")
    auto = (await srv.route(client)).json()
    assert auto["direct"]["endpoint"] == "127.0.0.1:51820"
    assert auto["udp_relay"]["endpoint"].startswith(f"{RELAY}:")  # the client's fallback
    assert "relay_endpoint" not in srv.hub.messages(node_id, "peer_add")[0]
    direct = (await srv.route(client, mode="direct")).json()
    assert direct["udp_relay"] is None


@LONG_COOLDOWN
async def test_leasing_a_session_that_holds_a_lease_gives_the_same_port(srv: Harness) -> None:
    """Two API instances' rounds (a device's roaming) may lease for one session at once: the
    second gets the first's port, not an error and not a second port."""
    await srv.node(endpoint=None)
    client = await srv.client_token("alice")
    answer = (await srv.route(client)).json()
    assert srv.server.ctx is not None
    row = await session_by_id(srv.server.ctx.db, answer["session_id"])
    assert row is not None
    again = await srv.server.ctx.sessions.udp_leases.lease(row, utcnow())
    assert again is not None
    assert again.endpoint == answer["udp_relay"]["endpoint"]
    async with srv.server.ctx.db.begin() as conn:
        served = await relay_leases.relay_sessions(conn, RELAY)
    assert [s.session_id for s in served] == [answer["session_id"]]


@LONG_COOLDOWN
async def test_every_new_lease_is_told_to_the_embedded_relay(srv: Harness) -> None:
    """The relay in the same process reads its sessions when told, not a second later."""
    await srv.node(endpoint=None)
    client = await srv.client_token("alice")
    assert srv.server.ctx is not None
    told: list[int] = []
    srv.server.ctx.sessions.udp_leases.on_leased = lambda: told.append(1)
    answer = (await srv.route(client)).json()
    assert answer["udp_relay"]["endpoint"].startswith(f"{RELAY}:")
    assert told == [1]
    await srv.route(client, mode="direct")  # no relay port: nothing to tell
    assert told == [1]
