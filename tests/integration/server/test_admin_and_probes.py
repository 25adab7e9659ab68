"""Admin listings, probes, metrics, OpenAPI, error shapes, rate limits, body limits."""

from __future__ import annotations

import logging
import re
import stat

import pytest

from higgs.server.store.db import Database
from tests.integration.server.conftest import Harness, bearer, node_body

TOKEN_RE = re.compile(r"hg[aencr]_[A-Za-z0-9_\-]{6,}")


async def test_admin_token_written_once_0600(srv: Harness) -> None:
    path = srv.server.admin_token_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert srv.server.new_admin_token == srv.admin_token
    assert srv.admin_token.startswith("hga_")


async def test_admin_listings_never_contain_credentials(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    alice = await srv.client_token("alice")
    await srv.client_token("bob")
    route = (await srv.route(alice)).json()
    admin = bearer(srv.admin_token)
    nodes = await srv.http.get("/v1/admin/nodes", headers=admin)
    sessions = await srv.http.get("/v1/admin/sessions", headers=admin)
    clients = await srv.http.get("/v1/admin/clients", headers=admin)
    for r in (nodes, sessions, clients):
        assert r.status_code == 200
        assert not TOKEN_RE.search(r.text), r.text
    (node,) = nodes.json()["nodes"]
    assert node["node_id"] == node_id
    assert node["open_sessions"] == 1
    assert node["connected"] is False
    (session,) = sessions.json()["sessions"]
    assert session["session_id"] == route["session_id"]
    assert session["client"] == "alice"
    assert [c["name"] for c in clients.json()["clients"]] == ["alice", "bob"]
    assert clients.json()["clients"][0]["open_sessions"] == 1
    only_closed = await srv.http.get("/v1/admin/sessions?state=closed", headers=admin)
    assert only_closed.json()["sessions"] == []
    bad = await srv.http.get("/v1/admin/sessions?state=maybe", headers=admin)
    assert bad.status_code == 422
    assert "state" in bad.json()["message"]


@pytest.mark.parametrize("path", ["/v1/admin/nodes", "/v1/admin/sessions", "/v1/admin/clients"])
async def test_admin_endpoints_need_the_admin_token(srv: Harness, path: str) -> None:
    client = await srv.client_token("alice")
    _, node_token, _ = await srv.node()
    assert (await srv.http.get(path)).status_code == 401
    assert (await srv.http.get(path, headers=bearer(client))).status_code == 401
    assert (await srv.http.get(path, headers=bearer(node_token))).status_code == 401
    r = await srv.http.get(path, headers=bearer("hga_not-the-admin-token"))
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"


async def test_probes_and_openapi(srv: Harness) -> None:
    assert (await srv.http.get("/healthz")).json() == {"status": "ok", "database": None}
    ready = await srv.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] == "ok"
    spec = (await srv.http.get("/v1/openapi.json")).json()
    for path in [
        "/v1/nodes/register",
        "/v1/nodes/{node_id}/heartbeat",
        "/v1/nodes/{node_id}",
        "/v1/nodes",
        "/v1/routes",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/renew",
        "/v1/admin/nodes",
        "/v1/admin/sessions",
        "/v1/admin/clients",
    ]:
        assert path in spec["paths"], path
    assert "RouteResponse" in spec["components"]["schemas"]


async def test_unknown_path_and_method_are_json_errors(srv: Harness) -> None:
    r = await srv.http.get("/v1/nope")
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "message": "no such path: /v1/nope"}
    r = await srv.http.put("/v1/routes", json={})
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed"


async def test_metrics_use_route_templates(srv: Harness) -> None:
    await srv.node()
    client = await srv.client_token("alice")
    sid = (await srv.route(client)).json()["session_id"]
    await srv.http.get(f"/v1/sessions/{sid}", headers=bearer(client))
    await srv.http.get("/v1/does/not/exist")
    text = (await srv.http.get("/metrics")).text
    assert 'route="/v1/sessions/{session_id}"' in text
    assert 'route="unmatched"' in text
    assert sid not in text
    assert 'higgs_nodes{state="online"} 1.0' in text
    assert "higgs_sessions_open 1.0" in text
    assert "higgs_sessions_opened_total 1.0" in text


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_per_s": 0.5, "rate_limit_burst": 3}])
async def test_rate_limit_answers_429_with_retry_after(srv: Harness) -> None:
    # Without any credential the answer stays 401: waiting would not help that caller.
    codes = [(await srv.http.get("/v1/nodes")).status_code for _ in range(6)]
    assert codes == [401] * 6
    # Guessing credentials costs tokens.
    guess = bearer("hgc_" + "x" * 40)
    codes = [(await srv.http.get("/v1/nodes", headers=guess)).status_code for _ in range(4)]
    assert codes[:3] == [401, 401, 401]
    assert codes[3] == 429
    r = await srv.http.get("/v1/nodes", headers=guess)
    assert r.status_code == 429
    assert r.json()["error"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1
    # Probes are not rate limited.
    assert (await srv.http.get("/healthz")).status_code == 200
    assert 'higgs_api_rate_limited_total{kind="address"}' in (await srv.http.get("/metrics")).text


async def test_wrong_method_on_a_path_is_405_with_every_allowed_method(srv: Harness) -> None:
    # /v1/nodes/register is not a node id: DELETE there is a wrong method, not a bad id.
    r = await srv.http.delete("/v1/nodes/register")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    r = await srv.http.request("OPTIONS", "/v1/sessions/s_0000000000000000")
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET"
    # A malformed id names no resource.
    assert (await srv.http.get("/v1/sessions/nope")).status_code == 404


async def test_undecodable_body_is_a_documented_400(srv: Harness) -> None:
    r = await srv.http.post(
        "/v1/nodes/register",
        content=b"\xff\xfe{",
        headers={**bearer(await srv.enrollment_key()), "content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith("body:")
    spec = (await srv.http.get("/v1/openapi.json")).json()
    assert "400" in spec["paths"]["/v1/nodes/register"]["post"]["responses"]


async def test_request_bodies_are_not_coerced(srv: Harness) -> None:
    node_id, token, _ = await srv.node()
    url = f"/v1/nodes/{node_id}/heartbeat"
    r = await srv.http.post(url, json={"ipv6": 0}, headers=bearer(token))
    assert r.status_code == 422
    assert r.json()["message"].startswith("body.ipv6:")
    r = await srv.http.post(url, json={"peers": "3"}, headers=bearer(token))
    assert r.status_code == 422
    # JSON's 3.0 is the integer 3.
    assert (await srv.http.post(url, json={"peers": 3.0}, headers=bearer(token))).status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": 2048}])
async def test_oversized_body_is_413(srv: Harness) -> None:
    body = node_body(region="x" * 4000)
    r = await srv.http.post(
        "/v1/nodes/register", json=body, headers=bearer(await srv.enrollment_key())
    )
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"


async def test_database_outage_is_503_not_a_traceback(srv: Harness) -> None:
    client = await srv.client_token("alice")
    healthy_db = srv.ctx.db
    # Nothing listens on loopback port 1: every query fails to connect.
    srv.ctx.db = Database("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    srv.ctx.identity.db = srv.ctx.db
    try:
        ready = await srv.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "not_ready", "database": "unreachable"}
        r = await srv.http.get("/v1/nodes", headers=bearer(client))
        assert r.status_code == 503
        assert r.json()["error"] == "unavailable"
        assert "Traceback" not in r.text
        assert (await srv.http.get("/metrics")).status_code == 200
    finally:
        await srv.ctx.db.dispose()
        srv.ctx.db = srv.ctx.identity.db = healthy_db
    assert (await srv.http.get("/readyz")).status_code == 200


async def test_logs_carry_ids_but_never_credentials(
    srv: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    node_id, node_token, _ = await srv.node()
    client = await srv.client_token("alice")
    route = (await srv.route(client)).json()
    await srv.http.delete(f"/v1/sessions/{route['session_id']}", headers=bearer(client))
    await srv.http.get("/v1/nodes", headers=bearer("hgc_wrong-token-for-the-log"))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert route["session_id"] in text
    assert node_id in text
    for secret in (node_token, client, route["relay"]["token"], srv.admin_token):
        assert secret not in text
    assert not TOKEN_RE.search(text)


async def test_admin_creates_clients_and_enrollment_keys(srv: Harness) -> None:
    admin = bearer(srv.admin_token)
    r = await srv.http.post("/v1/admin/clients", json={"name": "carol"}, headers=admin)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert token.startswith("hgc_")
    assert (await srv.http.get("/v1/nodes", headers=bearer(token))).status_code == 200
    dup = await srv.http.post("/v1/admin/clients", json={"name": "carol"}, headers=admin)
    assert dup.status_code == 409
    assert dup.json()["error"] == "client_exists"
    bad = await srv.http.post("/v1/admin/clients", json={"name": "no spaces"}, headers=admin)
    assert bad.status_code == 422
    assert "body.name" in bad.json()["message"]

    r = await srv.http.post(
        "/v1/admin/enrollment-keys", json={"uses": 2, "expires_in_s": 600}, headers=admin
    )
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert r.json()["uses_left"] == 2
    assert r.json()["expires_at"] is not None
    reg = await srv.http.post("/v1/nodes/register", json=node_body(), headers=bearer(key))
    assert reg.status_code == 201
    bad = await srv.http.post("/v1/admin/enrollment-keys", json={"uses": 0}, headers=admin)
    assert bad.status_code == 422
    assert "uses" in bad.json()["message"]
    # Only the admin may do any of this.
    for path, body in [("/v1/admin/clients", {"name": "x"}), ("/v1/admin/enrollment-keys", {})]:
        assert (await srv.http.post(path, json=body, headers=bearer(token))).status_code == 401


async def test_admin_revocation_closes_sessions_at_once(srv: Harness) -> None:
    node_id, _, _ = await srv.node()
    alice = await srv.client_token("alice")
    sid = (await srv.route(alice)).json()["session_id"]
    admin = bearer(srv.admin_token)
    r = await srv.http.delete("/v1/admin/clients/alice", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["revoked"] is True
    assert r.json()["open_sessions"] == 0
    assert (sid, "client_revoked") in srv.hub.closed
    (removed,) = srv.hub.messages(node_id, "peer_remove")
    assert removed["session_id"] == sid
    assert (await srv.http.get("/v1/nodes", headers=bearer(alice))).status_code == 401
    assert (await srv.http.delete("/v1/admin/clients/nobody", headers=admin)).status_code == 404
    assert (await srv.http.delete("/v1/admin/clients/b%20d", headers=admin)).status_code == 404
