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

from higgs.common.errors import HiggsError
from higgs.common.tls import client_context
from higgs.protocol.api import (
    NodeList,
    RouteMode,
    RouteRequest,
    RouteResponse,
    SessionInfo,
)

__all__ = ["ApiError", "ServerApi"]

M = TypeVar("M", bound=BaseModel)


class ApiError(HiggsError):
    """A REST call failed. ``status`` is the HTTP status, None when the server was unreachable;
    ``code`` is the server's stable error code when it sent one."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def unreachable(self) -> bool:
        return self.status is None

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status == 429


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
        headers = {"User-Agent": "higgsvpn"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        verify: Any = client_context(ca_file)
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            verify=verify,
            transport=transport,
            # Never through an environment proxy: the tunnel's control plane goes straight out.
            trust_env=False,
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
    ) -> RouteResponse:
        body = RouteRequest(
            client_public_key=public_key, node_id=node_id, country=country, mode=mode
        )
        resp = await self._call("POST", "/v1/routes", json_body=body.model_dump(mode="json"))
        return _parse(resp, RouteResponse)

    async def session(self, session_id: str) -> SessionInfo:
        return _parse(await self._call("GET", f"/v1/sessions/{session_id}"), SessionInfo)

    async def renew(self, session_id: str) -> SessionInfo:
        return _parse(await self._call("POST", f"/v1/sessions/{session_id}/renew"), SessionInfo)

    async def close(self, session_id: str) -> None:
        await self._call("DELETE", f"/v1/sessions/{session_id}")

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
        except httpx.TimeoutException as exc:
            raise ApiError(f"the server {self.base_url} did not answer in time ({path})") from exc
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the server {self.base_url}: {exc}") from exc
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
    code: str | None = None
    message = ""
    try:
        data = resp.json()
        if isinstance(data, dict):
            code = str(data.get("error")) if data.get("error") else None
            message = str(data.get("message") or data.get("detail") or "")
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = resp.text[:200]
    hint = _HINTS.get(resp.status_code, "request failed")
    text = f"{path}: HTTP {resp.status_code}: {hint}"
    if message:
        text += f" (server: {message})"
    return ApiError(text, status=resp.status_code, code=code)
