"""POST /v1/routes and the session endpoints: config, allocation, errors, ownership."""

from __future__ import annotations

import ipaddress
from datetime import datetime

import pytest

from higgs.common.secrets import hash_token
from tests.integration.server.conftest import Harness, bearer, new_public_key


async def test_route_answers_complete_wireguard_config_and_tells_node_and_hub(
    srv: Harness,
) -> None:
    node_id, _token, node = await srv.node()
    srv.hub.connected.add(node_id)
    client = await srv.client_token("alice")
    key = new_public_key()
    r = await srv.route(client, client_public_key=key)
    assert r.status_code == 201, r.text
    route = r.json()
    wg = route["wireguard"]
    address = ipaddress.IPv4Interface(wg["address"])
    assert address.network.prefixlen == 32
    assert address.ip in ipaddress.IPv4Network("10.77.0.0/24")
    assert str(address.ip) not in ("10.77.0.0", "10.77.0.1", "10.77.0.255")
    assert wg["node_public_key"] == node["public_key"]
    assert wg["dns"] == ["10.77.0.1"]
    assert wg["mtu"] == 1380
    assert wg["allowed_ips"] == ["0.0.0.0/0", "::/0"]
    assert wg["persistent_keepalive"] == 25
    assert route["direct"] == {"endpoint": "127.0.0.1:51820"}
    relay = route["relay"]
    assert relay["url"] == srv.server.relay_base + "/v1/relay/session"
    assert relay["token"].startswith("hgr_")
    assert 1 <= relay["channel"] <= 0xFFFFFFFF
    assert route["node"] == {"node_id": node_id, "country": "DE", "region": "Berlin"}
    assert route["ttl_s"] == 600
    assert datetime.fromisoformat(route["expires_at"]).tzinfo is not None
    # The hub admits exactly this token to exactly this channel of this node.
    assert srv.hub.sessions[route["session_id"]] == (
        relay["channel"],
        node_id,
        hash_token(relay["token"]),
    )
    (add,) = srv.hub.messages(node_id, "peer_add")
    assert add == {
        "type": "peer_add",
        "session_id": route["session_id"],
        "channel": relay["channel"],
        "public_key": key,
        "address": wg["address"],
        "relayed": True,
    }


@pytest.mark.stores
async def test_addresses_never_collide_and_skip_node_and_broadcast(srv: Harness) -> None:
    await srv.node(tunnel_subnet="10.77.5.0/29", max_clients=50)
    client = await srv.client_token("alice")
    addresses = []
    for _ in range(5):  # a /29 has 6 hosts: .1 is the node, 5 for clients
        r = await srv.route(client)
        assert r.status_code == 201, r.text
        addresses.append(r.json()["wireguard"]["address"])
    assert sorted(addresses) == [f"10.77.5.{i}/32" for i in range(2, 7)]
    full = await srv.route(client)
    assert full.status_code == 503
    assert full.json()["error"] == "no_route"
    # Closing one frees its address for the next session.
    sessions = (await srv.http.get("/v1/admin/sessions", headers=bearer(srv.admin_token))).json()
    first = next(s for s in sessions["sessions"] if s["address"] == "10.77.5.2/32")
    await srv.http.delete(f"/v1/sessions/{first['session_id']}", headers=bearer(client))
    again = await srv.route(client)
    assert again.json()["wireguard"]["address"] == "10.77.5.2/32"


async def test_route_spreads_load_and_prefers_connected_nodes(srv: Harness) -> None:
    a, _, _ = await srv.node(tunnel_subnet="10.77.1.0/24")
    b, _, _ = await srv.node(tunnel_subnet="10.77.2.0/24")
    srv.hub.connected.update({a, b})
    client = await srv.client_token("alice")
    picked = [(await srv.route(client)).json()["node"]["node_id"] for _ in range(4)]
    assert sorted(picked) == sorted([a, a, b, b])
    srv.hub.connected.discard(a)
    picked = [(await srv.route(client)).json()["node"]["node_id"] for _ in range(2)]
    assert picked == [b, b]


async def test_route_requirements(srv: Harness) -> None:
    de, _, _ = await srv.node(country="DE", bandwidth_mbps=20, tunnel_subnet="10.77.1.0/24")
    fr, _, _ = await srv.node(
        country="FR", bandwidth_mbps=100, endpoint=None, tunnel_subnet="10.77.2.0/24"
    )
    client = await srv.client_token("alice")
    r = await srv.route(client, country="fr")
    assert r.json()["node"]["node_id"] == fr
    assert r.json()["direct"] is None
    r = await srv.route(client, min_bandwidth_mbps=50)
    assert r.json()["node"]["node_id"] == fr
    r = await srv.route(client, node_id=de)
    assert r.json()["node"]["node_id"] == de
    r = await srv.route(client, mode="direct")
    assert r.json()["node"]["node_id"] == de
    assert r.json()["relay"] is None
    r = await srv.route(client, mode="relay", node_id=de)
    assert r.json()["direct"] is None
    assert r.json()["relay"]["token"].startswith("hgr_")
    r = await srv.route(client, country="JP")
    assert r.status_code == 503
    assert "no online node fits" in r.json()["message"]
    r = await srv.route(client, country="FR", mode="direct")
    assert r.status_code == 503
    assert "direct endpoint" in r.json()["message"]
    r = await srv.route(client, min_bandwidth_mbps=1000)
    assert r.status_code == 503
    r = await srv.route(client, node_id="n_0123456789abcdef")
    assert r.status_code == 404
    assert r.json()["error"] == "node_not_found"


async def test_no_node_is_a_clear_503(srv: Harness) -> None:
    client = await srv.client_token("alice")
    r = await srv.route(client)
    assert r.status_code == 503
    assert r.json() == {"error": "no_route", "message": "no node is online"}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "body.client_public_key: field required"),
        ({"client_public_key": "short"}, "client_public_key"),
        ({"client_public_key": "KEY", "node_id": "node-1"}, "node_id"),
        ({"client_public_key": "KEY", "country": "DEU"}, "country"),
        ({"client_public_key": "KEY", "min_bandwidth_mbps": -1}, "min_bandwidth_mbps"),
        ({"client_public_key": "KEY", "mode": "carrier-pigeon"}, "mode"),
    ],
)
async def test_route_rejects_bad_input(srv: Harness, body: dict[str, object], needle: str) -> None:
    await srv.node()
    client = await srv.client_token("alice")
    if body.get("client_public_key") == "KEY":
        body["client_public_key"] = new_public_key()
    r = await srv.http.post("/v1/routes", json=body, headers=bearer(client))
    assert r.status_code == 422, r.text
    assert needle in r.json()["message"]


async def test_route_needs_a_client_token(srv: Harness) -> None:
    _node_id, node_token, _ = await srv.node()
    body = {"client_public_key": new_public_key()}
    assert (await srv.http.post("/v1/routes", json=body)).status_code == 401
    r = await srv.http.post("/v1/routes", json=body, headers=bearer(node_token))
    assert r.status_code == 401
    r = await srv.http.post("/v1/routes", json=body, headers=bearer(srv.admin_token))
    assert r.status_code == 401
    r = await srv.http.post("/v1/routes", json=body, headers=bearer("hgc_forged-token-value"))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.stores
async def test_same_key_again_replaces_the_old_session(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    srv.hub.connected.add(node_id)
    client = await srv.client_token("alice")
    key = new_public_key()
    first = (await srv.route(client, client_public_key=key)).json()
    second = (await srv.route(client, client_public_key=key)).json()
    assert second["session_id"] != first["session_id"]
    old = await srv.http.get(f"/v1/sessions/{first['session_id']}", headers=bearer(client))
    assert old.json()["state"] == "closed"
    assert old.json()["close_reason"] == "replaced"
    assert (first["session_id"], "replaced") in srv.hub.closed
    kinds = [(m["type"], m["session_id"]) for m in srv.hub.messages(node_id)]
    assert kinds == [
        ("peer_add", first["session_id"]),
        ("peer_remove", first["session_id"]),
        ("peer_add", second["session_id"]),
    ]


async def test_key_of_another_clients_session_is_refused(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    alice = await srv.client_token("alice")
    mallory = await srv.client_token("mallory")
    key = new_public_key()
    assert (await srv.route(alice, client_public_key=key)).status_code == 201
    r = await srv.route(mallory, client_public_key=key, node_id=node_id)
    assert r.status_code == 409
    assert r.json()["error"] == "key_in_use"
    r = await srv.route(mallory, client_public_key=key)
    assert r.status_code == 503


async def test_session_get_renew_delete(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    client = await srv.client_token("alice")
    route = (await srv.route(client)).json()
    sid = route["session_id"]
    got = await srv.http.get(f"/v1/sessions/{sid}", headers=bearer(client))
    assert got.status_code == 200
    info = got.json()
    assert info["state"] == "open"
    assert info["node_id"] == node_id
    assert info["address"] == route["wireguard"]["address"]
    assert info["channel"] == route["relay"]["channel"]
    assert "token" not in got.text
    renewed = await srv.http.post(f"/v1/sessions/{sid}/renew", headers=bearer(client))
    assert renewed.status_code == 200
    assert datetime.fromisoformat(renewed.json()["expires_at"]) >= datetime.fromisoformat(
        info["expires_at"]
    )
    closed = await srv.http.delete(f"/v1/sessions/{sid}", headers=bearer(client))
    assert closed.status_code == 200
    assert closed.json()["state"] == "closed"
    assert closed.json()["close_reason"] == "client_closed"
    assert (sid, "client_closed") in srv.hub.closed
    assert sid not in srv.hub.sessions
    (removed,) = srv.hub.messages(node_id, "peer_remove")
    assert removed["public_key"] == info["client_public_key"]
    # Closed stays closed: deleting again changes nothing, renewing is refused.
    again = await srv.http.delete(f"/v1/sessions/{sid}", headers=bearer(client))
    assert again.json()["closed_at"] == closed.json()["closed_at"]
    assert len(srv.hub.messages(node_id, "peer_remove")) == 1
    r = await srv.http.post(f"/v1/sessions/{sid}/renew", headers=bearer(client))
    assert r.status_code == 409
    assert r.json()["error"] == "session_closed"


async def test_client_sees_only_its_own_sessions(srv: Harness) -> None:
    await srv.node()
    alice = await srv.client_token("alice")
    bob = await srv.client_token("bob")
    sid = (await srv.route(alice)).json()["session_id"]
    for method, path in [
        ("GET", f"/v1/sessions/{sid}"),
        ("POST", f"/v1/sessions/{sid}/renew"),
        ("DELETE", f"/v1/sessions/{sid}"),
    ]:
        r = await srv.http.request(method, path, headers=bearer(bob))
        assert r.status_code == 404, (method, r.text)
        assert r.json()["error"] == "session_not_found"
    assert (await srv.http.get(f"/v1/sessions/{sid}", headers=bearer(alice))).json()[
        "state"
    ] == "open"


async def test_session_id_is_validated(srv: Harness) -> None:
    client = await srv.client_token("alice")
    # A malformed id is no resource (the path only matches well-formed ids).
    r = await srv.http.get("/v1/sessions/s_nothex", headers=bearer(client))
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    r = await srv.http.get("/v1/sessions/s_0123456789abcdef", headers=bearer(client))
    assert r.status_code == 404


async def test_client_node_list_hides_secrets_and_offline_nodes(srv: Harness) -> None:
    node_id, _, _ = await srv.node(max_clients=4)
    client = await srv.client_token("alice")
    await srv.route(client)
    r = await srv.http.get("/v1/nodes", headers=bearer(client))
    assert r.status_code == 200
    assert r.json()["nodes"] == [
        {
            "node_id": node_id,
            "country": "DE",
            "region": "Berlin",
            "state": "online",
            "load": 0.25,
            "bandwidth_mbps": 50.0,
            "direct": True,
        }
    ]
    assert (await srv.http.get("/v1/nodes")).status_code == 401
