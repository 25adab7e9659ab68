"""The node heartbeat, served in the common case without FastAPI's request machinery.

Why: at 10,000 nodes, heartbeats are most of an instance's requests (~670/s) and FastAPI's
per-request work — routing through every route's pattern, solving the dependency tree
(context, rate limit, bearer, path, caller), reading and validating the body, validating the
endpoint's answer against its response model again — cost more than the heartbeat itself
(docs/benchmarks.md, "Control-plane speed per instance"). A pure ASGI middleware sees the
one path and method first and does only what the route would have done.

What it serves: ``POST /v1/nodes/{node_id}/heartbeat`` with a ``Bearer hgn_…`` credential and
a JSON body that validates as :class:`HeartbeatRequest` (validated as FastAPI does it:
``json.loads``, then the model in Python mode, so strictness is the same). Anything else — no
credential or another kind, another content type, a body that does not validate — goes to the
FastAPI route with the body replayed, which answers exactly as it always did (the OpenAPI
schema documents that route). Answers this lane gives itself (429, 401/403, 404, 409, 503)
come from the same functions as the route's error handlers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from higgs.protocol.api import NODE_ID_PATTERN, HeartbeatRequest
from higgs.server.api.deps import ApiContext, check_rate
from higgs.server.api.errors import failure_response

__all__ = ["HeartbeatLane"]

_PATH = re.compile(r"/v1/nodes/(" + NODE_ID_PATTERN[1:-1] + r")/heartbeat")


@dataclass(frozen=True)
class _Template:
    """Stands in for the FastAPI route in ``scope["route"]``: the observing middleware labels
    the request's latency with its template, the same label as the route's own."""

    path_format: str


_ROUTE = _Template("/v1/nodes/{node_id}/heartbeat")
_JSON_HEADERS = [(b"content-type", b"application/json")]


class HeartbeatLane:
    """Sits between the observing middleware (latency metrics, body limit) and FastAPI."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx
        self.served = 0  # heartbeats answered here (tests read it)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _PATH.fullmatch(scope["path"])
        token = _bearer_and_json(scope["headers"]) if match else None
        if match is None or token is None or not token.startswith("hgn_"):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the caller went away before its body arrived
        try:
            req = HeartbeatRequest.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # the route answers it (400/422, or 401 first)
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = _ROUTE
        client = scope.get("client")
        host = client[0] if client else None
        node_id = match.group(1)
        try:
            check_rate(self.ctx, host, token)
            claim = self.ctx.identity.claim_node(token, node_id)
            answer = await self.ctx.registry.heartbeat(node_id, req, source=host, claim=claim)
        except Exception as exc:
            await failure_response(exc, scope["path"], "POST")(scope, receive, send)
            return
        self.served += 1
        raw = answer.model_dump_json().encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
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
