"""Node endpoints: register, heartbeat, deregister, and who may call them."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from higgs.common.secrets import hash_token
from higgs.server.services.clock import utcnow
from tests.integration.server.conftest import Harness, bearer, new_public_key, node_body


async def test_register_creates_node_and_allows_its_link(srv: Harness) -> None:
    body = node_body()
    r = await srv.http.post(
        "/v1/nodes/register", json=body, headers=bearer(await srv.enrollment_key())
    )
    assert r.status_code == 201, r.text
    data = r.json()
    assert data["node_id"].startswith("n_")
    assert data["node_token"].startswith("hgn_")
    assert data["heartbeat_interval_s"] == 15
    assert data["relay_url"] == srv.server.relay_base + "/v1/relay/node"
    assert data["tunnel_address"] == "10.77.0.1/24"
    assert srv.hub.allowed[data["node_id"]] == hash_token(data["node_token"])


@pytest.mark.stores
async def test_same_public_key_is_the_same_node_and_old_token_dies(srv: Harness) -> None:
    node_id, token1, body = await srv.node()
    r = await srv.http.post(
        "/v1/nodes/register", json=body, headers=bearer(await srv.enrollment_key())
    )
    assert r.status_code == 200, r.text
    assert r.json()["node_id"] == node_id
    token2 = r.json()["node_token"]
    assert token2 != token1
    # Re-registering with its own (new) token needs no enrollment key.
    r = await srv.http.post("/v1/nodes/register", json=body, headers=bearer(token2))
    assert r.status_code == 200
    assert r.json()["node_id"] == node_id
    token3 = r.json()["node_token"]
    old = await srv.http.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token1))
    assert old.status_code == 401
    assert old.json()["error"] == "invalid_token"
    new = await srv.http.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token3))
    assert new.status_code == 200


async def test_node_token_cannot_take_another_nodes_key(srv: Harness) -> None:
    _a, token_a, _ = await srv.node()
    _b, _, body_b = await srv.node()
    r = await srv.http.post("/v1/nodes/register", json=body_b, headers=bearer(token_a))
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("public_key", "not-base64!", "public_key"),
        ("public_key", "AAAA", "public_key"),
        ("listen_port", 0, "listen_port"),
        ("listen_port", "x", "listen_port"),
        ("tunnel_subnet", "10.77.0.5/24", "tunnel_subnet"),
        ("tunnel_subnet", "8.8.8.0/24", "tunnel_subnet"),
        ("tunnel_subnet", "10.0.0.0/8", "tunnel_subnet"),
        ("endpoint", "203.0.113.7", "endpoint"),
        ("endpoint", "203.0.113.7:99999", "endpoint"),
        ("country", "Germany", "country"),
        ("max_clients", 0, "max_clients"),
        ("tunnel_mtu", 100, "tunnel_mtu"),
    ],
)
async def test_register_rejects_bad_fields_naming_them(
    srv: Harness, field: str, value: object, needle: str
) -> None:
    r = await srv.http.post(
        "/v1/nodes/register",
        json=node_body(**{field: value}),
        headers=bearer(await srv.enrollment_key()),
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"
    assert needle in r.json()["message"]


async def test_register_rejects_missing_field_and_bad_json(srv: Harness) -> None:
    key = await srv.enrollment_key()
    body = node_body()
    del body["tunnel_subnet"]
    r = await srv.http.post("/v1/nodes/register", json=body, headers=bearer(key))
    assert r.status_code == 422
    assert "body.tunnel_subnet: field required" in r.json()["message"]
    r = await srv.http.post(
        "/v1/nodes/register",
        content=b"{not json",
        headers={**bearer(key), "content-type": "application/json"},
    )
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["message"]
    r = await srv.http.post("/v1/nodes/register", json=[1, 2], headers=bearer(key))
    assert r.status_code == 422


async def test_register_credentials(srv: Harness) -> None:
    body = node_body()
    r = await srv.http.post("/v1/nodes/register", json=body)
    assert r.status_code == 401
    assert r.json()["error"] == "missing_token"
    client = await srv.client_token("alice")
    r = await srv.http.post("/v1/nodes/register", json=body, headers=bearer(client))
    assert r.status_code == 401
    r = await srv.http.post("/v1/nodes/register", json=body, headers=bearer("hge_forged12345"))
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"
    one_use = await srv.enrollment_key(uses=1)
    r = await srv.http.post("/v1/nodes/register", json=body, headers=bearer(one_use))
    assert r.status_code == 201
    r = await srv.http.post("/v1/nodes/register", json=node_body(), headers=bearer(one_use))
    assert r.status_code == 401
    assert r.json()["error"] == "exhausted_token"


@pytest.mark.stores
async def test_expired_enrollment_key_is_refused(srv: Harness) -> None:
    key = await srv.ctx.identity.create_enrollment_key(1, utcnow() + timedelta(milliseconds=1))
    await asyncio.sleep(0.05)
    r = await srv.http.post("/v1/nodes/register", json=node_body(), headers=bearer(key))
    assert r.status_code == 401
    assert r.json()["error"] == "expired_token"


async def test_heartbeat_stores_metrics_and_answers_interval(srv: Harness) -> None:
    node_id, token, _ = await srv.node()
    metrics = {
        "cpu_percent": 12.5,
        "memory_percent": 40,
        "peers": 2,
        "rx_bytes": 1000,
        "tx_bytes": 2000,
        "budget_left_mb": 500,
        "latency_ms": 20,
        "peer_stats": [
            {"public_key": new_public_key(), "rx_bytes": 1, "tx_bytes": 2, "last_handshake_s": 3}
        ],
    }
    r = await srv.http.post(f"/v1/nodes/{node_id}/heartbeat", json=metrics, headers=bearer(token))
    assert r.status_code == 200, r.text
    # ``relays``: the relay hosts the node times (none registered here, protocol §5.5).
    assert r.json() == {"heartbeat_interval_s": 15, "state": "online", "relays": []}
    admin = await srv.http.get("/v1/admin/nodes", headers=bearer(srv.admin_token))
    (node,) = admin.json()["nodes"]
    assert node["metrics"]["cpu_percent"] == 12.5
    assert node["metrics"]["budget_left_mb"] == 500
    assert node["metrics"]["peer_stats_count"] == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"cpu_percent": 150}, "cpu_percent"),
        ({"peers": -1}, "peers"),
        ({"latency_ms": "fast"}, "latency_ms"),
        ({"peer_stats": [{"public_key": "nope"}]}, "peer_stats.0.public_key"),
    ],
)
async def test_heartbeat_rejects_bad_metrics(
    srv: Harness, body: dict[str, object], needle: str
) -> None:
    node_id, token, _ = await srv.node()
    r = await srv.http.post(f"/v1/nodes/{node_id}/heartbeat", json=body, headers=bearer(token))
    assert r.status_code == 422
    assert needle in r.json()["message"]


async def test_node_acts_only_as_itself(srv: Harness) -> None:
    a, token_a, _ = await srv.node()
    b, _token_b, _ = await srv.node()
    r = await srv.http.post(f"/v1/nodes/{b}/heartbeat", json={}, headers=bearer(token_a))
    assert r.status_code == 403
    r = await srv.http.delete(f"/v1/nodes/{b}", headers=bearer(token_a))
    assert r.status_code == 403
    r = await srv.http.post(
        "/v1/nodes/n_0000000000000000/heartbeat", json={}, headers=bearer(token_a)
    )
    assert r.status_code == 403
    r = await srv.http.post("/v1/nodes/not-an-id/heartbeat", json={}, headers=bearer(token_a))
    assert r.status_code == 404
    client = await srv.client_token("mallory")
    r = await srv.http.post(f"/v1/nodes/{a}/heartbeat", json={}, headers=bearer(client))
    assert r.status_code == 401


async def test_heartbeat_with_an_uncached_token_answers_as_a_lookup_would(srv: Harness) -> None:
    """A node token the credential cache does not hold (a node heartbeats less often than
    the cache keeps it) is proved by the heartbeat's own UPDATE: the answers stay those of a
    token lookup, a bad token before a bad body, and a stopped node still gets 409."""
    a, token_a, _ = await srv.node()
    b, _token_b, _ = await srv.node()
    unknown = "hgn_" + "x" * 43
    bad_body = {"cpu_percent": 150}
    cases = [
        (a, unknown, {}, 401),
        (a, unknown, bad_body, 401),
        (b, token_a, {}, 403),
        (b, token_a, bad_body, 403),
        ("n_0000000000000000", token_a, {}, 403),
        (a, token_a, bad_body, 422),
        (a, token_a, {}, 200),
    ]
    for node_id, token, body, status in cases:
        srv.ctx.identity.forget_node(a)  # nothing cached: the UPDATE proves the token
        r = await srv.http.post(f"/v1/nodes/{node_id}/heartbeat", json=body, headers=bearer(token))
        assert r.status_code == status, (node_id, token == token_a, body, r.text)
    # Proved once, the token is cached: a second heartbeat answers the same.
    r = await srv.http.post(f"/v1/nodes/{a}/heartbeat", json={}, headers=bearer(token_a))
    assert r.status_code == 200
    assert (await srv.http.delete(f"/v1/nodes/{a}", headers=bearer(token_a))).status_code == 204
    srv.ctx.identity.forget_node(a)
    r = await srv.http.post(f"/v1/nodes/{a}/heartbeat", json={}, headers=bearer(token_a))
    assert r.status_code == 409
    assert r.json()["error"] == "node_stopped"


async def test_deregister_stops_node_and_closes_its_sessions(srv: Harness) -> None:
    node_id, token, body = await srv.node()
    client = await srv.client_token("alice")
    route = (await srv.route(client)).json()
    r = await srv.http.delete(f"/v1/nodes/{node_id}", headers=bearer(token))
    assert r.status_code == 204
    assert (node_id, "stopped") in srv.hub.forgotten
    assert srv.hub.offline == [(node_id, "node stopped")]  # client links: 4009
    assert (route["session_id"], "node_stopped") in srv.hub.closed
    (removed,) = srv.hub.messages(node_id, "peer_remove")
    assert removed["session_id"] == route["session_id"]
    assert removed["reason"] == "node_stopped"
    s = await srv.http.get(f"/v1/sessions/{route['session_id']}", headers=bearer(client))
    assert s.json()["state"] == "closed"
    nodes = await srv.http.get("/v1/nodes", headers=bearer(client))
    assert nodes.json()["nodes"] == []
    hb = await srv.http.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token))
    assert hb.status_code == 409
    assert hb.json()["error"] == "node_stopped"
    # Registering again brings the same node back.
    again = await srv.http.post("/v1/nodes/register", json=body, headers=bearer(token))
    assert again.status_code == 200
    assert again.json()["node_id"] == node_id
    assert srv.hub.allowed[node_id] == hash_token(again.json()["node_token"])
    nodes = await srv.http.get("/v1/nodes", headers=bearer(client))
    assert [n["node_id"] for n in nodes.json()["nodes"]] == [node_id]


@pytest.mark.stores
async def test_racing_registrations_of_one_key_make_one_node(srv: Harness) -> None:
    body = node_body()
    keys = [await srv.enrollment_key() for _ in range(4)]
    answers = await asyncio.gather(
        *(srv.http.post("/v1/nodes/register", json=body, headers=bearer(k)) for k in keys)
    )
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 1, codes
    assert set(codes) <= {200, 201, 409, 503}, [r.text for r in answers]
    nodes = (await srv.http.get("/v1/admin/nodes", headers=bearer(srv.admin_token))).json()
    assert len(nodes["nodes"]) == 1


@pytest.mark.stores
@pytest.mark.parametrize("uses", [1, 3])
async def test_enrollment_key_uses_cannot_be_raced(srv: Harness, uses: int) -> None:
    """Twelve registrations with different keys at once, on one key with ``uses`` uses:
    exactly ``uses`` nodes get in, on SQLite and PostgreSQL alike."""
    key = await srv.enrollment_key(uses=uses)
    answers = await asyncio.gather(
        *(
            srv.http.post("/v1/nodes/register", json=node_body(), headers=bearer(key))
            for _ in range(12)
        )
    )
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] * uses + [401] * (12 - uses), [r.text for r in answers]
    refused = {r.json()["error"] for r in answers if r.status_code == 401}
    assert refused == {"exhausted_token"}
    (record,) = await srv.ctx.identity.list_enrollment_keys()
    assert record.uses_left == 0
    listed = (await srv.http.get("/v1/admin/nodes", headers=bearer(srv.admin_token))).json()
    assert len(listed["nodes"]) == uses
