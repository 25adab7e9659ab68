"""The node's conversation with the server's REST API, through the transport seam
(httpx.MockTransport): no socket, no server process."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from higgs.common.keys import PrivateKey
from higgs.node.server_api import EnrollmentRejected, ServerApi, ServerApiError
from higgs.protocol.api import NodeRegisterRequest

SERVER = "http://198.51.100.10:8080"
NODE_ID = "n_0123456789abcdef"


def _registration() -> NodeRegisterRequest:
    return NodeRegisterRequest(
        public_key=PrivateKey.generate().public_b64(),
        listen_port=51820,
        tunnel_subnet="10.77.0.0/24",
    )


def _answer() -> dict[str, Any]:
    return {
        "node_id": NODE_ID,
        "node_token": "hgn_" + "s" * 32,
        "heartbeat_interval_s": 15,
        "relay_url": "ws://198.51.100.10:8081/v1/relay/node",
        "tunnel_address": "10.77.0.1/24",
    }


class Server:
    """Answers each request with the next scripted response and records what it was asked."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return self.responses.pop(0)


async def _heartbeat_body() -> dict[str, Any]:
    return {"peers": 0}


def _api(tmp_path: Path, server: Server, enroll_key: str | None = "hge_" + "k" * 20) -> ServerApi:
    return ServerApi(
        SERVER,
        enroll_key=enroll_key,
        registration=_registration(),
        state_dir=tmp_path,
        heartbeat_body=_heartbeat_body,
        transport=httpx.MockTransport(server),
    )


async def test_registration_stores_the_identity_secretly_and_heartbeats_with_its_token(
    tmp_path: Path,
) -> None:
    server = Server(
        httpx.Response(201, json=_answer()),
        httpx.Response(200, json={"heartbeat_interval_s": 20}),
    )
    api = _api(tmp_path, server)
    ident = await api.register()
    assert ident.node_id == NODE_ID
    request = server.seen[0]
    assert (request.method, request.url.path) == ("POST", "/v1/nodes/register")
    assert request.headers["authorization"] == "Bearer hge_" + "k" * 20
    assert json.loads(request.content)["listen_port"] == 51820
    stored = tmp_path / "identity.json"
    assert json.loads(stored.read_text())["node_token"] == "hgn_" + "s" * 32
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600

    assert await api.heartbeat() == 20
    beat = server.seen[1]
    assert beat.url.path == f"/v1/nodes/{NODE_ID}/heartbeat"
    assert beat.headers["authorization"] == "Bearer hgn_" + "s" * 32
    await api.aclose()


async def test_a_refused_enrollment_key_is_fatal_and_says_what_to_do(tmp_path: Path) -> None:
    server = Server(
        httpx.Response(401, json={"error": "unauthorized", "message": "unknown enrollment key"})
    )
    api = _api(tmp_path, server)
    with pytest.raises(EnrollmentRejected, match=r"unknown enrollment key.*enroll create"):
        await api.register()
    assert not (tmp_path / "identity.json").exists()
    await api.aclose()


async def test_a_bad_registration_names_the_servers_reason(tmp_path: Path) -> None:
    server = Server(
        httpx.Response(422, json={"error": "invalid", "message": "listen_port: out of range"})
    )
    api = _api(tmp_path, server)
    with pytest.raises(ServerApiError, match="refused the registration: listen_port"):
        await api.register()
    await api.aclose()


async def test_an_overloaded_or_unreachable_server_is_retried_not_fatal(tmp_path: Path) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    for transport in (
        httpx.MockTransport(Server(httpx.Response(503, headers={"retry-after": "7"}))),
        httpx.MockTransport(unreachable),
    ):
        api = ServerApi(
            SERVER,
            enroll_key="hge_" + "k" * 20,
            registration=_registration(),
            state_dir=tmp_path,
            heartbeat_body=_heartbeat_body,
            transport=transport,
        )
        assert await api.try_register() is False
        assert api.status.state == "unreachable"
        await api.aclose()
