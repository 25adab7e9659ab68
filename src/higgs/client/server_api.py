"""bosonserver's REST API as the client uses it (docs/protocol.md §2): nodes, routes, sessions.

Answers are parsed with the shared models of :mod:`higgs.protocol.api`; every failure becomes an
:class:`ApiError` whose message says what happened in the user's terms (unreachable server, bad
token, no node available) with the server's own error code and message when it sent one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from higgs.common.backoff import Backoff
from higgs.daemon import rest
from higgs.daemon.rest import RestError
from higgs.protocol.api import (
    NodeList,
    PunchAnswer,
    RelayList,
    RouteMode,
    RouteRequest,
    RouteResponse,
    SessionInfo,
)
from higgs.protocol.devices import DeviceCreated, DeviceCreateRequest, DeviceInfo, DeviceList

__all__ = ["CONFLICT_RETRIES", "ApiError", "ServerApi", "retryable_conflict"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# A 409 ``conflict`` is the server's "a concurrent request changed the same record; retry"
# (two requests raced for one unique row; its transaction rolled back, nothing was done): the
# same request is sent again, this many more times at most, after a jittered backoff. Every
# other 409 (``key_in_use``, ``session_closed``, ``client_exists``…) is an answer, not a race.
CONFLICT_RETRIES = 3
_CONFLICT_BACKOFF_S = (0.25, 2.0)  # first ceiling, largest ceiling


class ApiError(RestError):
    """A REST call of the client failed (see :class:`higgs.daemon.rest.RestError`)."""


class ServerApi:
    """An async REST client bound to one server and one client token."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        ca_file: Path | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        conflict_retries: int = CONFLICT_RETRIES,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.conflict_retries = conflict_retries
        self._sleep = sleep
        self._http = rest.new_client(
            self.base_url,
            timeout=timeout,
            user_agent="higgsvpn",
            token=token,
            ca_file=ca_file,
            transport=transport,
        )
        self.last_rtt_ms: float | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ServerApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- calls ------------------------------------------------------------------------------

    async def nodes(self) -> NodeList:
        return _parse(await self._call("GET", "/v1/nodes"), NodeList)

    async def route(
        self,
        public_key: str,
        *,
        node_id: str | None = None,
        country: str | None = None,
        mode: RouteMode = "auto",
        relay_rtt_ms: dict[str, float] | None = None,
    ) -> RouteResponse:
        body = RouteRequest(
            client_public_key=public_key,
            node_id=node_id,
            country=country,
            mode=mode,
            relay_rtt_ms=relay_rtt_ms or None,
        )
        resp = await self._call("POST", "/v1/routes", json_body=body.model_dump(mode="json"))
        return _parse(resp, RouteResponse)

    async def relays(self) -> RelayList:
        """The live relay hosts to time before a route (docs/protocol.md §5.5)."""
        return _parse(await self._call("GET", "/v1/relays"), RelayList)

    async def session(self, session_id: str) -> SessionInfo:
        return _parse(await self._call("GET", f"/v1/sessions/{session_id}"), SessionInfo)

    async def punch(self, session_id: str) -> PunchAnswer:
        """The observed public addresses of both ends and a hole-punch offer (§2.7)."""
        return _parse(await self._call("GET", f"/v1/sessions/{session_id}/punch"), PunchAnswer)

    async def renew(self, session_id: str) -> SessionInfo:
        return _parse(await self._call("POST", f"/v1/sessions/{session_id}/renew"), SessionInfo)

    async def close(self, session_id: str) -> None:
        await self._call("DELETE", f"/v1/sessions/{session_id}")

    # --- devices (issue 18) -----------------------------------------------------------------

    async def create_device(self, req: DeviceCreateRequest) -> DeviceCreated:
        body = req.model_dump(mode="json")
        return _parse(await self._call("POST", "/v1/devices", json_body=body), DeviceCreated)

    async def devices(self) -> DeviceList:
        return _parse(await self._call("GET", "/v1/devices"), DeviceList)

    async def revoke_device(self, name: str) -> DeviceInfo:
        return _parse(await self._call("DELETE", f"/v1/devices/{name}"), DeviceInfo)

    # --- plumbing ---------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        backoff = Backoff(*_CONFLICT_BACKOFF_S)
        for retry in range(self.conflict_retries + 1):
            try:
                return await self._call_once(method, path, json_body)
            except ApiError as exc:
                if not retryable_conflict(exc) or retry == self.conflict_retries:
                    raise
                delay = max(0.05, backoff.next_delay(), min(exc.retry_after_s or 0.0, 5.0))
                log.info("%s %s: %s; retrying in %.2f s", method, path, exc, delay)
                await self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _call_once(
        self, method: str, path: str, json_body: dict[str, Any] | None
    ) -> httpx.Response:
        started = time.monotonic()
        try:
            resp = await self._http.request(method, path, json=json_body)
        except httpx.HTTPError as exc:
            raise ApiError(str(rest.transport_error(self.base_url, path, exc))) from exc
        self.last_rtt_ms = (time.monotonic() - started) * 1000
        if resp.status_code >= 400:
            raise _error_from(resp, path)
        return resp


def retryable_conflict(exc: ApiError) -> bool:
    return exc.status == 409 and exc.code == "conflict"


def _parse(resp: httpx.Response, model: type[M]) -> M:
    try:
        return model.model_validate(resp.json())
    except (ValidationError, json.JSONDecodeError) as exc:
        raise ApiError(
            f"the server's answer to {resp.request.method} {resp.request.url.path} is not what "
            f"this client expects (client and server versions differ?): {exc}",
            status=resp.status_code,
        ) from exc


_HINTS = {
    401: "the client token was refused: check --token (a client token starts with hgc_)",
    403: "the client token is not allowed to do this (revoked?)",
    404: "not found",
    409: "conflict",
    429: "the server is rate-limiting this client; try again later",
    503: "no node is available right now",
}


def _error_from(resp: httpx.Response, path: str) -> ApiError:
    code, message = rest.error_body(resp)
    hint = _HINTS.get(resp.status_code, "request failed")
    text = f"{path}: HTTP {resp.status_code}: {hint}"
    if message:
        text += f" (server: {message})"
    return ApiError(text, status=resp.status_code, code=code, retry_after_s=rest.retry_after(resp))
