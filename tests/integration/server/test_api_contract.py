"""The REST API keeps its own OpenAPI contract: Schemathesis, with every check it has, against a
real bosonserver on loopback (uvicorn, SQLite, the recording relay double).

Each operation of ``/v1/openapi.json`` becomes one test. Schemathesis generates valid and
invalid requests from the schema and checks each answer: no 5xx, every status code and header
documented, bodies matching their schema, invalid input rejected, valid input accepted,
undeclared methods answered 405, missing credentials 401, and more (``checks.ALL``).

The callers' credentials are real: the protected endpoints get a valid admin, client, node or
enrollment credential according to the path, so generation reaches the handlers instead of
stopping at auth. Bounded: a few examples per operation and a per-example deadline, so the
whole module takes seconds (``make soak``-sized runs would raise ``_EXAMPLES``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation

from higgs.server.api.app import openapi_document
from higgs.server.app import running_server
from higgs.server.config import ServerSettings
from tests.integration.server.conftest import make_settings, node_body
from tests.integration.server.hubdouble import RecordingHub

_EXAMPLES = 12

load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())  # every built-in check, not only the default set

# The schema's semantic formats (protocol/api.py): what a valid value of each looks like, so
# that "schema-valid data is accepted" is checked with values the server must accept.
_octet = st.integers(0, 255)
schemathesis.openapi.format(
    "endpoint",
    st.one_of(
        st.tuples(st.integers(1, 223), _octet, _octet, _octet, st.integers(1, 65535)).map(
            lambda t: "{}.{}.{}.{}:{}".format(*t)
        ),
        st.from_regex(r"\A[a-z][a-z0-9]{0,20}(\.[a-z][a-z0-9]{0,20}){0,3}\Z").flatmap(
            lambda host: st.integers(1, 65535).map(lambda port: f"{host}:{port}")
        ),
        st.ip_addresses(v=6).map(lambda a: f"[{a}]:51820"),
    ),
)
schemathesis.openapi.format(
    "ipv4-private-network",
    st.tuples(
        st.sampled_from(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]),
        st.integers(16, 29),
        st.integers(0, 2**16),
    ).map(lambda t: _subnet(ipaddress.IPv4Network(t[0]), t[1], t[2])),
)
schemathesis.openapi.format(
    "ipv6-ula-network",
    st.tuples(st.integers(48, 112), st.integers(0, 2**40)).map(
        lambda t: _subnet(ipaddress.IPv6Network("fd00::/8"), t[0], t[1])
    ),
)


def _subnet(space: ipaddress.IPv4Network | ipaddress.IPv6Network, prefix: int, pick: int) -> str:
    prefix = max(prefix, space.prefixlen)
    count = 2 ** (prefix - space.prefixlen)
    base = int(space.network_address) + (pick % count) * 2 ** (space.max_prefixlen - prefix)
    return f"{ipaddress.ip_address(base)}/{prefix}"


@dataclass(frozen=True)
class LiveServer:
    url: str
    admin: str
    client: str
    enroll: str
    node_id: str
    node_token: str


def _serve(settings: ServerSettings, ready: Future[LiveServer], stop: threading.Event) -> None:
    async def main() -> None:
        try:
            async with running_server(settings, RecordingHub) as server:
                ctx = server.ctx
                assert ctx is not None
                admin = server.admin_token_path.read_text().strip()
                client = await ctx.identity.add_client("contract")
                enroll = await ctx.identity.create_enrollment_key(100_000)
                async with httpx.AsyncClient(base_url=server.api_url, timeout=10) as http:
                    r = await http.post(
                        "/v1/nodes/register",
                        json=node_body(),
                        headers={"Authorization": f"Bearer {enroll}"},
                    )
                    r.raise_for_status()
                    node = r.json()
                ready.set_result(
                    LiveServer(
                        server.api_url, admin, client, enroll, node["node_id"], node["node_token"]
                    )
                )
                await asyncio.to_thread(stop.wait)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    asyncio.run(main())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # The server runs on its own event loop in a thread: Schemathesis drives it with a
    # blocking HTTP client from the test's thread, over real sockets.
    settings_ = make_settings(tmp_path_factory.mktemp("contract"), None)
    ready: Future[LiveServer] = Future()
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(settings_, ready, stop), daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=60)
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the contract server did not stop"


def credential_for(live: LiveServer, path: str) -> str | None:
    if path.startswith("/v1/admin/"):
        return live.admin
    if path == "/v1/nodes/register":
        return live.enroll
    if path.startswith("/v1/nodes/{node_id}"):
        return live.node_token
    if path.startswith("/v1/"):
        return live.client
    return None


# Loaded when the module is collected (Schemathesis' lazy fixture loader does not work with
# pytest 9); test_served_schema_is_the_one_tested checks the live server serves this document.
schema = schemathesis.openapi.from_dict(
    openapi_document(),
    config=SchemathesisConfig.from_dict(
        {
            "operations": [
                {
                    # "No online node fits" is a documented 503 with Retry-After (capacity,
                    # not a fault): the fuzzer asks for countries and nodes that do not exist.
                    "include-path": "/v1/routes",
                    "include-method": "POST",
                    "checks": {
                        "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}
                    },
                }
            ]
        }
    ),
)


@schema.parametrize()
@settings(
    max_examples=_EXAMPLES,
    deadline=5000,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_api_keeps_its_contract(case: Any, live: LiveServer) -> None:
    meta = case.meta
    # A component Schemathesis made invalid on purpose stays invalid: a valid credential over a
    # removed Authorization header, or our node's id over a malformed one, would turn the
    # negative case into a valid request (and "accepted" would then be reported as a failure).
    bad_headers = meta is not None and meta.is_negative_at(ParameterLocation.HEADER)
    bad_path = meta is not None and meta.is_negative_at(ParameterLocation.PATH)
    token = None if bad_headers else credential_for(live, case.operation.path)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    if (
        case.operation.path.startswith("/v1/nodes/{node_id}")
        and case.path_parameters
        and not bad_path
    ):
        # A node token speaks only for its own node: any other id is a (documented) 403,
        # which would keep every generated body away from the handler.
        case.path_parameters["node_id"] = live.node_id
    case.call_and_validate(base_url=live.url, headers=headers, checks=ALL_CHECKS)


def test_served_schema_is_the_one_tested(live: LiveServer) -> None:
    served = httpx.get(f"{live.url}/v1/openapi.json", timeout=10).json()
    assert served == openapi_document()
