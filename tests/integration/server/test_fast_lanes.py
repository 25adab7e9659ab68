"""The fast lanes (api/fastlane.py) and the heartbeats' batched UPDATEs (store/heartbeats.py),
on a real server: a lane answers every heartbeat, route and close exactly as the FastAPI
route does, serves the plain ones itself, and heartbeats arriving together share a
transaction."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from higgs.server.api.app import create_app
from higgs.server.api.fastlane import FastLanes
from tests.integration.server.conftest import Harness, bearer, new_public_key


def _lanes(srv: Harness) -> FastLanes:
    """The lanes in the running server's middleware stack (built by its first request)."""
    assert srv.server._uvicorn is not None
    app: Any = srv.server._uvicorn.config.loaded_app
    while not isinstance(app, FastLanes):
        app = getattr(app, "middleware_stack", None) or getattr(app, "app", None)
        assert app is not None, "no FastLanes in the server's middleware stack"
    return app


def _answer(r: httpx.Response) -> tuple[int, Any, str | None, str | None]:
    return r.status_code, r.json(), r.headers.get("www-authenticate"), r.headers.get("allow")


HEARTBEAT = "/v1/nodes/{node_id}/heartbeat"


def _latency_count(srv: Harness, route: str, method: str, status: str) -> float:
    value = srv.ctx.metrics.registry.get_sample_value(
        "higgs_api_request_seconds_count", {"route": route, "method": method, "status": status}
    )
    return value or 0.0


def _route_only(srv: Harness) -> httpx.AsyncClient:
    """A client of the same server's app without the lanes: every request through FastAPI."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(srv.ctx, fast_lanes=False)),
        base_url="http://route-only",
    )


async def test_the_lane_answers_every_heartbeat_as_the_route_does(srv: Harness) -> None:
    a, token_a, _ = await srv.node()
    b, _token_b, _ = await srv.node()
    stopped, token_stopped, _ = await srv.node()
    assert (await srv.http.delete(f"/v1/nodes/{stopped}", headers=bearer(token_stopped))).is_success
    client = await srv.client_token("mallory")
    unknown = "hgn_" + "x" * 43
    json_header = {"Content-Type": "application/json"}
    # (node, headers, body): each sent once through the lane, once through the route alone.
    cases: list[tuple[str, dict[str, str], bytes]] = [
        (a, bearer(token_a), b'{"cpu_percent": 10, "peers": 2}'),
        (a, bearer(token_a), b"{}"),
        (a, bearer(token_a), b'{"cpu_percent": 150}'),
        (a, bearer(token_a), b'{"peers": "2"}'),
        (a, bearer(token_a), b"not json"),
        (a, bearer(token_a), b""),
        (a, bearer(unknown), b"{}"),
        (a, bearer(unknown), b'{"cpu_percent": 150}'),
        (b, bearer(token_a), b"{}"),
        ("n_0000000000000000", bearer(token_a), b"{}"),
        (a, bearer(client), b"{}"),
        (a, {}, b"{}"),
        (a, {"Authorization": "Basic eDp5"}, b"{}"),
        (stopped, bearer(token_stopped), b"{}"),
    ]
    lanes = _lanes(srv)
    async with _route_only(srv) as route_only:
        for node_id, headers, body in cases:
            path = f"/v1/nodes/{node_id}/heartbeat"
            for forget in (True, False):  # the token proved by the UPDATE, then from the cache
                if forget:
                    srv.ctx.identity.forget_node(a)
                via_lane = await srv.http.post(path, content=body, headers=headers | json_header)
                if forget:
                    srv.ctx.identity.forget_node(a)
                via_route = await route_only.post(path, content=body, headers=headers | json_header)
                assert _answer(via_lane) == _answer(via_route), (node_id, headers, body, forget)
    # The valid ones (the first two cases, twice each) were served by the lane itself.
    assert lanes.served[HEARTBEAT] == 4
    assert _latency_count(srv, HEARTBEAT, "POST", "200") >= 4


async def test_the_lane_leaves_other_content_types_and_methods_to_the_route(srv: Harness) -> None:
    a, token_a, _ = await srv.node()
    lanes = _lanes(srv)
    r = await srv.http.post(
        f"/v1/nodes/{a}/heartbeat",
        content=b"{}",
        headers=bearer(token_a) | {"Content-Type": "text/plain"},
    )
    assert r.status_code == 422, r.text  # FastAPI's answer to a body it does not read as JSON
    r = await srv.http.get(f"/v1/nodes/{a}/heartbeat", headers=bearer(token_a))
    assert r.status_code == 405
    assert lanes.served[HEARTBEAT] == 0
    r = await srv.http.post(f"/v1/nodes/{a}/heartbeat", json={}, headers=bearer(token_a))
    assert r.status_code == 200
    assert lanes.served[HEARTBEAT] == 1


async def test_the_lanes_answer_routes_and_closes_as_the_routes_do(srv: Harness) -> None:
    node_id, node_token, _ = await srv.node()
    srv.hub.connected.add(node_id)
    alice = await srv.client_token("alice")
    bob = await srv.client_token("bob")
    lanes = _lanes(srv)
    async with _route_only(srv) as route_only:
        # Routes: a success compared by shape (ids and keys are new each time), errors whole.
        ok = [
            await c.post("/v1/routes", json={"client_public_key": new_public_key()},
                         headers=bearer(alice))
            for c in (srv.http, route_only)
        ]  # fmt: skip
        assert [r.status_code for r in ok] == [201, 201], ok[0].text
        assert ok[0].json().keys() == ok[1].json().keys()
        assert ok[0].headers["content-type"] == ok[1].headers["content-type"]
        key = json.dumps(new_public_key()).encode()
        for headers, body in [
            (bearer(alice), b'{"client_public_key": "nope"}'),
            (bearer(alice), b'{"client_public_key": ' + key + b', "mode": 3}'),
            (bearer(alice), b"[]"),
            (bearer("hgc_" + "x" * 43), b'{"client_public_key": ' + key + b"}"),
            (bearer(node_token), b"{}"),
            ({}, b"{}"),
        ]:  # fmt: skip
            answers = [
                await c.post("/v1/routes", content=body, headers=headers)
                for c in (srv.http, route_only)
            ]
            assert _answer(answers[0]) == _answer(answers[1]), (headers, body)
        # Closes: the lane's close, then the route's of the same session (idempotent).
        session = ok[0].json()["session_id"]
        first = await srv.http.delete(f"/v1/sessions/{session}", headers=bearer(alice))
        again = await route_only.delete(f"/v1/sessions/{session}", headers=bearer(alice))
        assert first.status_code == 200, first.text
        assert first.json()["state"] == "closed"
        assert _answer(first) == _answer(again)
        other = ok[1].json()["session_id"]
        for path, token in [
            (f"/v1/sessions/{other}", bob),  # another client's: no such session for bob
            ("/v1/sessions/s_0000000000000000", alice),
            (f"/v1/sessions/{other}", "hgc_" + "x" * 43),
            (f"/v1/sessions/{other}", node_token),
        ]:
            answers = [await c.delete(path, headers=bearer(token)) for c in (srv.http, route_only)]
            assert _answer(answers[0]) == _answer(answers[1]), (path, token == bob)
    assert lanes.served["/v1/routes"] == 1
    assert lanes.served["/v1/sessions/{session_id}"] == 1
    # The lane's requests and the route's (same metrics) under one label each.
    assert _latency_count(srv, "/v1/routes", "POST", "201") == 2
    assert _latency_count(srv, "/v1/sessions/{session_id}", "DELETE", "404") == 4


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_per_s": 1, "rate_limit_burst": 2}])
async def test_the_lane_keeps_the_rate_limit(srv: Harness) -> None:
    a, token_a, _ = await srv.node()
    answers = [
        await srv.http.post(f"/v1/nodes/{a}/heartbeat", json={}, headers=bearer(token_a))
        for _ in range(3)
    ]
    # Registration took one token from this address's bucket of two: one heartbeat passes.
    assert [r.status_code for r in answers] == [200, 429, 429]
    assert answers[1].json()["error"] == "rate_limited"
    assert answers[1].headers["retry-after"] == "1"


@pytest.mark.stores
async def test_heartbeats_arriving_together_share_a_transaction(srv: Harness) -> None:
    nodes = [await srv.node() for _ in range(24)]
    batches = srv.ctx.registry.writes.batches

    async def beat(i: int, node_id: str, token: str) -> httpx.Response:
        body = {"cpu_percent": float(i), "peers": i}
        return await srv.http.post(
            f"/v1/nodes/{node_id}/heartbeat", json=body, headers=bearer(token)
        )

    answers = await asyncio.gather(*(beat(i, n, t) for i, (n, t, _) in enumerate(nodes)))
    assert [r.status_code for r in answers] == [200] * len(nodes)
    assert 1 <= srv.ctx.registry.writes.batches - batches < len(nodes) // 2
    admin = await srv.http.get("/v1/admin/nodes", headers=bearer(srv.admin_token))
    by_id = {n["node_id"]: n for n in admin.json()["nodes"]}
    for i, (node_id, _, _) in enumerate(nodes):
        assert by_id[node_id]["state"] == "online"
        assert by_id[node_id]["metrics"]["cpu_percent"] == float(i)
        assert by_id[node_id]["metrics"]["peers"] == i


async def test_a_failed_batch_answers_each_heartbeat_503_and_the_next_one_works(
    srv: Harness,
) -> None:
    nodes = [await srv.node() for _ in range(4)]

    async def beat_all() -> list[httpx.Response]:
        return await asyncio.gather(
            *(
                srv.http.post(f"/v1/nodes/{n}/heartbeat", json={}, headers=bearer(t))
                for n, t, _ in nodes
            )
        )

    # The table gone under the server: every statement of the batch fails in SQLite itself.
    async with srv.ctx.db.begin() as conn:
        await conn.execute(text("ALTER TABLE nodes RENAME TO nodes_away"))
    try:
        answers = await beat_all()
    finally:
        async with srv.ctx.db.begin() as conn:
            await conn.execute(text("ALTER TABLE nodes_away RENAME TO nodes"))
    assert [r.status_code for r in answers] == [503] * len(nodes)
    assert {r.json()["error"] for r in answers} == {"unavailable"}
    assert [r.status_code for r in await beat_all()] == [200] * len(nodes)
