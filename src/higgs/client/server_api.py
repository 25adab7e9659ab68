"""bosonserver's REST API as the client uses it (docs/protocol.md §2): nodes, routes, sessions.

Answers are parsed with the shared models of :mod:`higgs.protocol.api`; every failure becomes an
:class:`ApiError` whose message says what happened in the user's terms (unreachable server, bad
token, no node available) with the server's own error code and message when it sent one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

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

__all__ = ["ApiError", "ServerApi"]

M = TypeVar("M", bound=BaseModel)


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
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
        started = time.monotonic()
        try:
            resp = await self._http.request(method, path, json=json_body)
        except httpx.HTTPError as exc:
            raise ApiError(str(rest.transport_error(self.base_url, path, exc))) from exc
        self.last_rtt_ms = (time.monotonic() - started) * 1000
        if resp.status_code >= 400:
            raise _error_from(resp, path)
        return resp


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
