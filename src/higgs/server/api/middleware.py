"""ASGI middleware: request body size limit and API latency by route template."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from higgs.server.metrics import ServerMetrics

__all__ = ["ObserveMiddleware"]


class _TooLarge(Exception):
    pass


class ObserveMiddleware:
    """Times every HTTP request under its route *template* (``/v1/sessions/{session_id}``,
    never the raw path, so the label set stays bounded) and refuses bodies over the limit."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                started = True
            await send(message)

        length = _content_length(scope)
        try:
            if length is not None and length > self.max_body:
                status = 413
                await _reply_too_large(send, self.max_body)
                return
            seen = 0

            async def receive_wrapper() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        raise _TooLarge
                return message

            try:
                await self.app(scope, receive_wrapper, send_wrapper)
            except _TooLarge:
                if not started:
                    status = 413
                    await _reply_too_large(send, self.max_body)
        finally:
            route = scope.get("route")
            # path_format: "/v1/sessions/{session_id}", without the path convertor's name.
            template = getattr(route, "path_format", None) or "unmatched"
            self.metrics.api_latency.labels(
                route=template, method=scope.get("method", ""), status=str(status)
            ).observe(time.perf_counter() - start)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply_too_large(send: Send, limit: int) -> None:
    body: dict[str, Any] = {
        "error": "body_too_large",
        "message": f"body: request body is larger than {limit} bytes",
    }
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})
