"""A real bosonserver on loopback (uvicorn on an ephemeral port), on SQLite or PostgreSQL.

A test using ``srv`` (or ``database``) runs on the SQLite file in a temporary data directory.
A test marked ``stores`` (or in a module with ``pytestmark = pytest.mark.stores``) runs twice:
once on SQLite, once with a fresh database in the throwaway PostgreSQL cluster. Mark a test
``stores`` when what it checks is the store's behaviour -- its SQL, a constraint, a race
between requests, what survives a restart -- since that is where the two databases can
differ; everything above the store (HTTP, auth, validation, the relay wiring) is the same
code on either, and a second run on PostgreSQL would only repeat it at twice the cost.
Requests go over real HTTP with httpx. The relay hub is the recording double (hubdouble.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from higgs.common.keys import PrivateKey
from higgs.server.app import BosonServer, running_server
from higgs.server.config import ServerSettings
from higgs.server.relay.ports import RelayEvents
from tests.integration.server.hubdouble import RecordingHub


def new_public_key() -> str:
    return PrivateKey.generate().public_b64()


def node_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "public_key": new_public_key(),
        "listen_port": 51820,
        "endpoint": "127.0.0.1:51820",
        "tunnel_subnet": "10.77.0.0/24",
        "max_clients": 8,
        "bandwidth_mbps": 50,
        "country": "DE",
        "region": "Berlin",
        "version": "0.1.0",
    }
    body.update(overrides)
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Harness:
    server: BosonServer
    http: httpx.AsyncClient
    settings: ServerSettings
    hubs: list[RecordingHub] = field(default_factory=list)

    @property
    def hub(self) -> RecordingHub:
        return self.hubs[-1]

    @property
    def admin_token(self) -> str:
        return self.server.admin_token_path.read_text().strip()

    @property
    def ctx(self) -> Any:
        return self.server.ctx

    async def enrollment_key(self, uses: int = 5) -> str:
        key: str = await self.ctx.identity.create_enrollment_key(uses)
        return key

    async def client_token(self, name: str) -> str:
        token: str = await self.ctx.identity.add_client(name)
        return token

    async def node(self, **overrides: Any) -> tuple[str, str, dict[str, Any]]:
        """Registers a node; returns (node_id, node_token, request body)."""
        body = node_body(**overrides)
        r = await self.http.post(
            "/v1/nodes/register", json=body, headers=bearer(await self.enrollment_key(1))
        )
        assert r.status_code == 201, r.text
        data = r.json()
        return data["node_id"], data["node_token"], body

    async def route(self, client_token: str, **overrides: Any) -> httpx.Response:
        body: dict[str, Any] = {"client_public_key": new_public_key()}
        body.update(overrides)
        return await self.http.post("/v1/routes", json=body, headers=bearer(client_token))


def make_settings(tmp_path: Path, database: str | None, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "relay_listen": "127.0.0.1:0",
        "data_dir": tmp_path / "data",
        "database": database,
        "heartbeat_interval_s": 15,
        "session_ttl_s": 600,
        "sweep_interval_s": 0.2,
        "rate_limit_per_s": 1000,
        "rate_limit_burst": 1000,
        # The API tests register made-up public keys whose private halves they discard; the
        # proof itself is tested with the default (required) in test_key_proof.py.
        "require_key_proof": False,
    }
    values.update(overrides)
    return ServerSettings(**values)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database" not in metafunc.fixturenames:
        return
    stores: list[Any] = ["sqlite"]
    if metafunc.definition.get_closest_marker("stores") is not None:
        stores.append(pytest.param("postgresql", marks=pytest.mark.postgres))
    metafunc.parametrize("database", stores, indirect=True)


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str | None:
    """None (the SQLite file in the data directory) or a fresh PostgreSQL database's URL; which
    one is chosen per test by :func:`pytest_generate_tests` above."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def hub_factory() -> tuple[list[RecordingHub], Callable[[RelayEvents, CollectorRegistry], Any]]:
    hubs: list[RecordingHub] = []

    def factory(events: RelayEvents, registry: CollectorRegistry) -> RecordingHub:
        hub = RecordingHub(events, registry)
        hubs.append(hub)
        return hub

    return hubs, factory


@contextlib.asynccontextmanager
async def start(
    settings: ServerSettings, hub_factory: tuple[list[RecordingHub], Any]
) -> AsyncIterator[Harness]:
    hubs, factory = hub_factory
    async with (
        running_server(settings, factory) as server,
        httpx.AsyncClient(base_url=server.api_url, timeout=10) as http,
    ):
        yield Harness(server, http, settings, hubs)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Tests override server settings with ``@pytest.mark.parametrize`` on this fixture."""
    return {}


@pytest.fixture
async def srv(
    tmp_path: Path,
    database: str | None,
    hub_factory: tuple[list[RecordingHub], Any],
    settings_overrides: dict[str, Any],
) -> AsyncIterator[Harness]:
    async with start(make_settings(tmp_path, database, **settings_overrides), hub_factory) as h:
        yield h
