"""The node's server API against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from higgs.common.backoff import Backoff
from higgs.node.server_api import EnrollmentRejected, ServerApi, load_identity
from higgs.protocol.api import NodeRegisterRequest
from tests.integration.node.fake_server import NodeApiServer

PUBKEY = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
REGISTRATION = NodeRegisterRequest(
    public_key=PUBKEY, listen_port=51820, tunnel_subnet="10.77.0.0/24"
)


async def body() -> dict[str, Any]:
    return {"cpu_percent": 1.0, "peers": 0}


@pytest.fixture
async def server() -> AsyncIterator[NodeApiServer]:
    srv = NodeApiServer()
    await srv.start()
    yield srv
    await srv.stop()


def make_api(srv: NodeApiServer, state: Path, key: str | None = None) -> ServerApi:
    return ServerApi(
        srv.url,
        enroll_key=srv.enroll_key if key is None else key,
        registration=REGISTRATION,
        state_dir=state,
        heartbeat_body=body,
        backoff=Backoff(initial=0.05, maximum=0.2),
    )


async def wait_for(cond: Callable[[], bool]) -> None:
    # Polling what a user would look at (the link's status); bounded so a failure cannot hang.
    async with asyncio.timeout(10):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(api: ServerApi) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(api.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.aclose()


async def test_registers_heartbeats_and_keeps_identity(
    server: NodeApiServer, tmp_path: Path
) -> None:
    api = make_api(server, tmp_path)
    async with running(api):
        await wait_for(lambda: len(server.heartbeats) >= 2)
    assert server.registrations == ["enrollment key"]
    assert server.heartbeats[0] == {"cpu_percent": 1.0, "peers": 0}
    ident_file = tmp_path / "identity.json"
    assert ident_file.stat().st_mode & 0o777 == 0o600
    ident = load_identity(tmp_path, server.url)
    assert ident is not None
    assert ident.node_id in server.nodes

    # A restart re-registers with the node's own token: the same node, no enrollment use.
    again = make_api(server, tmp_path)
    async with running(again):
        await wait_for(lambda: again.status.state == "online")
    assert server.registrations == ["enrollment key", "node token"]
    assert again.identity is not None
    assert again.identity.node_id == ident.node_id


async def test_reregisters_when_the_server_forgot_the_node(
    server: NodeApiServer, tmp_path: Path
) -> None:
    api = make_api(server, tmp_path)
    async with running(api):
        await wait_for(lambda: api.status.state == "online")
        first = api.status.node_id
        server.forget_all()
        await wait_for(lambda: api.status.registrations == 2 and api.status.state == "online")
        count = len(server.heartbeats)
        await wait_for(lambda: len(server.heartbeats) > count)
    assert server.registrations == ["enrollment key", "rejected", "enrollment key"]
    assert api.status.node_id != first


async def test_bad_enrollment_key_is_fatal_not_a_retry_loop(
    server: NodeApiServer, tmp_path: Path
) -> None:
    api = make_api(server, tmp_path, key="hge_wrong")
    with pytest.raises(EnrollmentRejected, match="enrollment key"):
        async with asyncio.timeout(10):
            await api.run()
    await api.aclose()
    assert server.registrations == ["rejected"]
    assert api.status.state == "rejected"
    assert not (tmp_path / "identity.json").exists()


async def test_backs_off_while_unreachable_then_recovers(tmp_path: Path) -> None:
    srv = NodeApiServer()  # not started yet: its port refuses connections
    api = make_api(srv, tmp_path)
    async with running(api):
        await wait_for(lambda: api.status.state == "unreachable")
        assert api.status.last_error
        await srv.start()
        try:
            await wait_for(lambda: api.status.state == "online")
        finally:
            await srv.stop()
    assert srv.registrations == ["enrollment key"]


async def test_deregisters_on_stop(server: NodeApiServer, tmp_path: Path) -> None:
    api = make_api(server, tmp_path)
    task = asyncio.create_task(api.run())
    await wait_for(lambda: api.status.state == "online")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await api.deregister() is True
    await api.aclose()
    assert server.deleted == [api.status.node_id]
