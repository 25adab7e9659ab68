"""The hottest endpoints, served in the common case without FastAPI's request machinery.

Why: at 10,000 nodes, heartbeats are most of an instance's requests (~670/s), and a client's
route and its close are the requests a user waits for. FastAPI's per-request work — routing
through every route's pattern, solving the dependency tree (context, rate limit, bearer,
path, caller, quota), reading and validating the body, validating the endpoint's answer
against its response model again — cost as much as the work itself (docs/benchmarks.md,
"Control-plane speed per instance"). A pure ASGI middleware sees these paths first and does
only what their routes would have done, in the same order of checks.

What it serves (:data:`LANES`): ``POST /v1/nodes/{node_id}/heartbeat`` with a ``Bearer hgn_…``
credential, ``POST /v1/routes`` and ``DELETE /v1/sessions/{session_id}`` with a ``Bearer
hgc_…`` one; a body, where there is one, declared JSON (or not declared) and valid for the
endpoint's model — validated as FastAPI does it: ``json.loads``, then the model in Python
mode, so strictness is the same. Anything else — no credential or another kind, another
content type, a body that does not validate — goes to the FastAPI route with the body
replayed, which answers exactly as it always did (the OpenAPI schema documents those routes).
Answers a lane gives itself (429, 401/403, 404, 409, 503, …) come from the same function as
the routes' error handlers (:func:`higgs.server.api.errors.failure_response`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from higgs.protocol.api import (
    NODE_ID_PATTERN,
    SESSION_ID_PATTERN,
    HeartbeatRequest,
    RouteRequest,
)
from higgs.server.api.deps import ApiContext, check_rate
from higgs.server.api.errors import failure_response

__all__ = ["LANES", "FastLanes", "Lane"]

# (context, the id in the path or "", the credential, the validated body or None, the
# caller's address) -> (status, answer)
Serve = Callable[[ApiContext, str, str, Any, str | None], Awaitable[tuple[int, BaseModel]]]


@dataclass(frozen=True)
class Lane:
    method: str
    path: re.Pattern[str]  # fullmatch; group 1, if any, is the id the endpoint acts on
    path_format: str  # the route's template: the latency metric's label, as FastAPI's
    token_prefix: str  # a credential of another kind goes to the route (its 401)
    body: type[BaseModel] | None
    serve: Serve


async def _heartbeat(
    ctx: ApiContext, node_id: str, token: str, req: HeartbeatRequest, host: str | None
) -> tuple[int, BaseModel]:
    claim = ctx.identity.claim_node(token, node_id)
    return 200, await ctx.registry.heartbeat(node_id, req, source=host, claim=claim)


async def _route(
    ctx: ApiContext, _: str, token: str, req: RouteRequest, host: str | None
) -> tuple[int, BaseModel]:
    client = await ctx.identity.authenticate_client(token)
    if ctx.usage is not None:  # deps.ClientWithinQuota
        await ctx.usage.check_quota(client.id)
    return 201, await ctx.sessions.create_route(client, req)


async def _close(
    ctx: ApiContext, session_id: str, token: str, _: None, host: str | None
) -> tuple[int, BaseModel]:
    client = await ctx.identity.authenticate_client(token)
    return 200, await ctx.sessions.close(client, session_id)


def _id(pattern: str) -> str:
    return "(" + pattern[1:-1] + ")"


LANES: tuple[Lane, ...] = (
    Lane(
        "POST",
        re.compile(rf"/v1/nodes/{_id(NODE_ID_PATTERN)}/heartbeat"),
        "/v1/nodes/{node_id}/heartbeat",
        "hgn_",
        HeartbeatRequest,
        _heartbeat,
    ),
    Lane("POST", re.compile(r"/v1/routes"), "/v1/routes", "hgc_", RouteRequest, _route),
    Lane(
        "DELETE",
        re.compile(rf"/v1/sessions/{_id(SESSION_ID_PATTERN)}"),
        "/v1/sessions/{session_id}",
        "hgc_",
        None,
        _close,
    ),
)


@dataclass(frozen=True)
class _Template:
    """Stands in for the FastAPI route in ``scope["route"]``: the observing middleware labels
    the request's latency with its template, the same label as the route's own."""

    path_format: str


_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastLanes:
    """Sits between the observing middleware (latency metrics, body limit) and FastAPI."""

    def __init__(self, app: ASGIApp, ctx: ApiContext, lanes: tuple[Lane, ...] = LANES) -> None:
        self.app = app
        self.ctx = ctx
        self.lanes = lanes
        self._templates = {lane.path_format: _Template(lane.path_format) for lane in lanes}
        self.served: dict[str, int] = {lane.path_format: 0 for lane in lanes}  # tests read it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for lane in self.lanes:
                if scope["method"] == lane.method:
                    match = lane.path.fullmatch(scope["path"])
                    if match is not None:
                        await self._serve(lane, match, scope, receive, send)
                        return
        await self.app(scope, receive, send)

    async def _serve(
        self, lane: Lane, match: re.Match[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        token = _bearer_and_json(scope["headers"])
        if token is None or not token.startswith(lane.token_prefix):
            await self.app(scope, receive, send)
            return
        req: BaseModel | None = None
        if lane.body is not None:
            body = await _read_body(receive)
            if body is None:
                return  # the caller went away before its body arrived
            try:
                req = lane.body.model_validate(json.loads(body))
            except (ValueError, ValidationError):  # the route answers it (400/422, or 401)
                await self.app(scope, _replay(body, receive), send)
                return
        scope["route"] = self._templates[lane.path_format]
        client = scope.get("client")
        host = client[0] if client else None
        try:
            check_rate(self.ctx, host, token)
            status, answer = await lane.serve(
                self.ctx, match.group(1) if match.re.groups else "", token, req, host
            )
        except Exception as exc:
            await failure_response(exc, scope["path"], scope["method"])(scope, receive, send)
            return
        self.served[lane.path_format] += 1
        raw = answer.model_dump_json().encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(raw)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": raw})


def _bearer_and_json(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request's bearer credential when its body is declared JSON (or not declared:
    FastAPI reads such a body as JSON too); None when the route should look at it."""
    token: str | None = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not credential:
                return None
            token = credential
        elif name == b"content-type" and _media_type(value) != b"application/json":
            return None
    return token


def _media_type(content_type: bytes) -> bytes:
    return content_type.split(b";", 1)[0].strip().lower()


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` with the body already read handed out again first."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        message: dict[str, Any] = {"type": "http.request", "body": body, "more_body": False}
        return message

    return again
