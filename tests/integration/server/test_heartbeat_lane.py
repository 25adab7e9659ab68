"""The heartbeat's lane (api/fastlane.py) and its batched UPDATEs (store/heartbeats.py), on a
real server: the lane answers every heartbeat exactly as the FastAPI route does, serves the
plain ones itself, and heartbeats arriving together share a transaction."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from higgs.server.api.app import create_app
from higgs.server.api.fastlane import HeartbeatLane
from tests.integration.server.conftest import Harness, bearer


def _lane(srv: Harness) -> HeartbeatLane:
    """The lane in the running server's middleware stack (built by its first request)."""
    assert srv.server._uvicorn is not None
    app: Any = srv.server._uvicorn.config.loaded_app
    while not isinstance(app, HeartbeatLane):
        app = getattr(app, "middleware_stack", None) or getattr(app, "app", None)
        assert app is not None, "no HeartbeatLane in the server's middleware stack"
    return app


def _answer(r: httpx.Response) -> tuple[int, Any, str | None, str | None]:
    return r.status_code, r.json(), r.headers.get("www-authenticate"), r.headers.get("allow")


def _latency_count(srv: Harness, status: str) -> float:
    value = srv.ctx.metrics.registry.get_sample_value(
        "higgs_api_request_seconds_count",
        {"route": "/v1/nodes/{node_id}/heartbeat", "method": "POST", "status": status},
    )
    return value or 0.0


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
    route_only = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(srv.ctx, fast_lanes=False)),
        base_url="http://route-only",
    )
    lane = _lane(srv)
    async with route_only:
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
    assert lane.served == 4
    assert _latency_count(srv, "200") >= 4


async def test_the_lane_leaves_other_content_types_and_methods_to_the_route(srv: Harness) -> None:
    a, token_a, _ = await srv.node()
    lane = _lane(srv)
    r = await srv.http.post(
        f"/v1/nodes/{a}/heartbeat",
        content=b"{}",
        headers=bearer(token_a) | {"Content-Type": "text/plain"},
    )
    assert r.status_code == 422, r.text  # FastAPI's answer to a body it does not read as JSON
    r = await srv.http.get(f"/v1/nodes/{a}/heartbeat", headers=bearer(token_a))
    assert r.status_code == 405
    assert lane.served == 0
    r = await srv.http.post(f"/v1/nodes/{a}/heartbeat", json={}, headers=bearer(token_a))
    assert r.status_code == 200
    assert lane.served == 1


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
    assert srv.ctx.registry.writes.batches - batches < len(nodes) // 2
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
