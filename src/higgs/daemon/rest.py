"""The one way node and client talk to bosonserver's REST API: an httpx client with the same
settings for both, one reading of the server's error body, one error type.

The transport is a seam: pass ``httpx.MockTransport(handler)`` and a unit test drives the
program's server conversation with no socket at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from higgs.common.errors import HiggsError
from higgs.common.tls import client_context, unverifiable_context

__all__ = ["RestError", "error_body", "new_client", "retry_after", "transport_error"]


class RestError(HiggsError):
    """A REST call failed. ``status`` is the HTTP status, None when the server was unreachable;
    ``code`` is the server's stable error code when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s

    @property
    def unreachable(self) -> bool:
        return self.status is None


def new_client(
    base_url: str,
    *,
    timeout: float,
    user_agent: str,
    token: str | None = None,
    ca_file: Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    headers = {"User-Agent": user_agent}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    # TLS 1.2 minimum (higgs.common.tls). A plain-http server needs no CAs: loading the
    # system's takes 0.1-0.3 s of every start (docs/benchmarks.md, "Time to connect"); a
    # context with none still refuses any https URL this client might be handed.
    https = base_url.startswith("https:")
    verify: Any = client_context(ca_file) if https or ca_file else unverifiable_context()
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        timeout=timeout,
        verify=verify,
        transport=transport,
        # Never through an environment proxy: the control plane goes straight to the server.
        trust_env=False,
    )


def error_body(response: httpx.Response) -> tuple[str | None, str]:
    """The server's error code and message (docs/protocol.md: ``{"error", "message"}``);
    an answer that is not such a body gives its first 200 characters as the message."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, response.text[:200]
    if not isinstance(data, dict):
        return None, ""
    code = str(data["error"]) if data.get("error") else None
    return code, str(data.get("message") or data.get("detail") or "")


def retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds (capped at 300), or None."""
    value = response.headers.get("retry-after")
    try:
        return min(300.0, float(value)) if value else None
    except ValueError:
        return None


def transport_error(base_url: str, path: str, exc: httpx.HTTPError) -> RestError:
    """A request that got no answer: status None (unreachable)."""
    if isinstance(exc, httpx.TimeoutException):
        return RestError(f"the server {base_url} did not answer in time ({path})")
    return RestError(f"cannot reach the server {base_url}: {exc}")
