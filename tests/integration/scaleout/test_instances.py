"""Two instances behind HAProxy: any instance answers, commands reach the node's link through
the bus, revocations hold everywhere within 1 s, a killed instance's node moves to the other,
and a stopped bus loses nothing (docs/scaleout.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from higgs.common.keys import PrivateKey
from higgs.protocol import keyproof
from higgs.server.config import ServerSettings
from higgs.server.services.identity import IdentityService
from higgs.server.store.db import Database
from higgs.server.store.open import open_database
from higgs.server.store.tables import NodePresence
from higgs.transport.relay_link import RelayLink
from tests.integration.scaleout.conftest import Deployment, Instance, PgOutage

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as its own user"),
    pytest.mark.asyncio(loop_scope="module"),
]

# The full outage of the issue in `make soak`; `make test` keeps it short.
OUTAGE_S = float(os.environ.get("HIGGS_SCALEOUT_OUTAGE_S", "3"))


def unique(name: str) -> str:
    """A client name of this attempt: a rerun of a test runs against the same module-scoped
    database, where the first attempt's client still exists."""
    return f"{name}-{secrets.token_hex(3)}"


def key() -> str:
    return PrivateKey.generate().public_b64()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def until(check: Callable[[], Any], within_s: float, what: str) -> float:
    """Polls ``check`` (sync or async) until truthy; returns the seconds it took."""
    start = time.monotonic()
    last: Exception | None = None
    while True:
        try:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
        except (httpx.HTTPError, OSError, DBAPIError) as exc:  # an outage being waited out
            value, last = None, exc
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > within_s:
            raise AssertionError(f"{what}: not within {within_s} s (last error: {last})")
        await asyncio.sleep(0.05)


class FakeNode:
    """A registered node holding its control link the way higgsnode does (RelayLink)."""

    def __init__(self, node_id: str, token: str, relay_url: str) -> None:
        self.node_id, self.token = node_id, token
        self.messages: list[dict[str, Any]] = []
        self.data: list[tuple[int, bytes]] = []
        self.ups = 0
        self.link = RelayLink(
            relay_url,
            token,
            on_data=lambda ch, dgs: self.data.extend((ch, bytes(d)) for d in dgs),
            on_text=self.messages.append,
            on_state=self._state,
            ping_interval_s=2,
            dead_after_s=6,
        )

    def _state(self, up: bool) -> None:
        self.ups += up

    def peers_of(self, kind: str) -> set[str]:
        return {m["session_id"] for m in self.messages if m.get("type") == kind}

    def synced(self) -> set[str]:
        out: set[str] = set()
        for m in self.messages:
            if m.get("type") == "sync":
                out = {p["session_id"] for p in m["peers"]}
        return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def db(
    deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    settings = ServerSettings(database=deployment.database, data_dir=tmp_path_factory.mktemp("cli"))
    database = await open_database(settings, auto_migrate=False)
    yield database
    await database.dispose()


async def holder(db: Database, node_id: str) -> str | None:
    async with db.begin() as conn:
        value: str | None = await conn.scalar(
            select(NodePresence.instance_id).where(NodePresence.node_id == node_id)
        )
    return value


def node_body(public_key: str) -> dict[str, Any]:
    return {
        "public_key": public_key, "listen_port": 51820, "endpoint": "127.0.0.1:51820",
        "tunnel_subnet": "10.77.0.0/24", "max_clients": 8, "bandwidth_mbps": 50,
        "country": "DE", "region": "Berlin", "version": "0.1.0",
    }  # fmt: skip


def admin_token(dep: Deployment) -> str:
    """The admin token the first instance to start wrote (both share the database)."""
    for name in dep.instances:
        path = dep.root / name / "admin.token"
        if path.exists():
            return path.read_text().strip()
    raise AssertionError("no instance wrote an admin token")


def other_than(dep: Deployment, held: str | None) -> Instance:
    return dep.instances["b" if held == "a" else "a"]


async def route(http: httpx.AsyncClient, inst: Instance, client: str) -> dict[str, Any]:
    """A relayed route asked of ``inst``; its answer. An instance that did not register the
    node routes to it once its routing view is reloaded (every reconciliation, 0.5 s here):
    ``no_route`` is asked again for a few reconciliations, anything else fails at once."""
    body = {"client_public_key": key(), "mode": "relay"}
    answers: list[httpx.Response] = []

    async def routed() -> bool:
        r = await http.post(inst.api + "/v1/routes", json=body, headers=bearer(client))
        answers.append(r)
        if r.status_code != 201:
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "no_route", r.text
        return r.status_code == 201

    await until(routed, 5, f"a route on {inst.name} (last: {answers[-1].text if answers else ''})")
    answer: dict[str, Any] = answers[-1].json()
    return answer


@contextlib.asynccontextmanager
async def attached_node(
    dep: Deployment, db: Database, http: httpx.AsyncClient
) -> AsyncIterator[FakeNode]:
    """A node registered through the balancer, its link up, and every instance knowing
    which instance holds it (so that a route on either picks it and reaches it). On the way
    out it is stopped: the next test's routes have only their own node to choose."""
    enroll = await IdentityService(db).create_enrollment_key(1)
    body = node_body(key())
    r = await http.post(dep.api + "/v1/nodes/register", json=body, headers=bearer(enroll))
    assert r.status_code == 201, r.text
    data = r.json()
    assert data["relay_url"].startswith(dep.relay)  # nodes dial the balancer
    node = FakeNode(data["node_id"], data["node_token"], data["relay_url"])
    node.link.start()
    try:
        await until(lambda: holder(db, node.node_id), 10, "presence claimed")
        beat = f"/v1/nodes/{node.node_id}/heartbeat"
        r = await http.post(dep.api + beat, json={}, headers=bearer(node.token))
        assert r.status_code == 200, r.text
        admin = bearer(admin_token(dep))
        probe = bearer(await IdentityService(db).add_client(f"probe-{node.node_id}"))

        def listed(answer: httpx.Response, **want: Any) -> bool:
            return any(
                n["node_id"] == node.node_id and all(n[k] == v for k, v in want.items())
                for n in answer.json()["nodes"]
            )

        async def routable_everywhere() -> bool:
            for inst in dep.instances.values():
                if inst.proc is None or inst.proc.poll() is not None:
                    continue
                # The routing view (reloaded by each reconciliation) and the link's holder.
                seen = await http.get(inst.api + "/v1/nodes", headers=probe)
                linked = await http.get(inst.api + "/v1/admin/nodes", headers=admin)
                if not (listed(seen, state="online") and listed(linked, connected=True)):
                    return False
            return True

        await until(routable_everywhere, 10, "every instance routes to the node's link")
        yield node
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await http.delete(dep.api + f"/v1/nodes/{node.node_id}", headers=bearer(node.token))
        await node.link.close()


@dataclass
class CrossRoute:
    """A relayed route asked of the instance that does not hold the node's link."""

    http: httpx.AsyncClient
    node: FakeNode
    client: str  # the client's token
    held: Instance  # holds the node's link
    other: Instance  # served the route
    answer: dict[str, Any]

    @property
    def session_id(self) -> str:
        return str(self.answer["session_id"])


@contextlib.asynccontextmanager
async def routed_across(dep: Deployment, db: Database, name: str) -> AsyncIterator[CrossRoute]:
    """A node attached to one instance, a route for it asked of the other, its peer_add
    delivered through the bus."""
    client = await IdentityService(db).add_client(unique(name))
    async with httpx.AsyncClient(timeout=10) as http, attached_node(dep, db, http) as node:
        held = dep.instances[str(await holder(db, node.node_id))]
        other = other_than(dep, held.name)
        answer = await route(http, other, client)
        sid = answer["session_id"]
        await until(lambda: sid in node.peers_of("peer_add"), 5, "peer_add via the bus")
        yield CrossRoute(http, node, client, held, other, answer)


async def test_a_route_on_one_instance_reaches_the_node_on_the_other(
    deployment: Deployment, db: Database
) -> None:
    async with routed_across(deployment, db, "c-route") as x:
        sid, auth = x.session_id, bearer(x.client)
        # The relayed client is sent to the hub that holds the node's link.
        assert x.answer["relay"]["url"].startswith(f"ws://127.0.0.1:{x.held.relay_port}/")
        # Any instance answers for the session; the close reaches the node the same way.
        via_lb = await x.http.get(deployment.api + f"/v1/sessions/{sid}", headers=auth)
        assert via_lb.status_code == 200
        r = await x.http.delete(x.other.api + f"/v1/sessions/{sid}", headers=auth)
        assert r.status_code == 200, r.text
        await until(lambda: sid in x.node.peers_of("peer_remove"), 5, "peer_remove via the bus")


async def relayed_data_flows(node: FakeNode, url: str, relay: dict[str, Any]) -> None:
    """A client's session link to ``url`` carries datagrams to the node and back."""
    channel: int = relay["channel"]
    got: list[bytes] = []
    link = RelayLink(
        url,
        relay["token"],
        on_data=lambda _ch, dgs: got.extend(bytes(d) for d in dgs),
        ping_interval_s=2,
        dead_after_s=6,
    )
    link.start()

    def sent(via: RelayLink, payload: bytes, arrived: Callable[[], bool]) -> bool:
        via.send_datagrams(channel, [payload])  # again each poll: a datagram may drop
        return arrived()

    try:
        await asyncio.wait_for(link.wait_connected(), 5)
        up, down = f"up {url}".encode(), f"down {url}".encode()
        await until(
            lambda: sent(link, up, lambda: (channel, up) in node.data), 5, f"{url}: to the node"
        )
        await until(lambda: sent(node.link, down, lambda: down in got), 5, f"{url}: to the client")
    finally:
        await link.close()


async def test_a_websocket_relayed_session_carries_data_across_instances(
    deployment: Deployment, db: Database
) -> None:
    async with routed_across(deployment, db, "c-data") as x:
        relay = x.answer["relay"]
        # The answer sends the client to the hub that holds the node's link, although the
        # other instance served the route.
        await relayed_data_flows(x.node, relay["url"], relay)
        # A client on the other instance's hub (a balancer's pick, or the node moved since
        # the answer) is spliced to the holder's hub: data still flows both ways.
        path = relay["url"].split("/", 3)[3]
        await relayed_data_flows(x.node, f"ws://127.0.0.1:{x.other.relay_port}/{path}", relay)


async def test_a_challenge_from_one_instance_is_proved_on_the_other_and_not_replayed(
    deployment: Deployment, db: Database
) -> None:
    a, b = deployment.instances["a"], deployment.instances["b"]
    node_key = PrivateKey.generate()

    async def register(inst: Instance, proof: dict[str, str]) -> httpx.Response:
        enroll = await IdentityService(db).create_enrollment_key(1)
        body = {**node_body(node_key.public_b64()), "proof": proof}
        return await http.post(inst.api + "/v1/nodes/register", json=body, headers=bearer(enroll))

    async with httpx.AsyncClient(timeout=10) as http:
        enroll = await IdentityService(db).create_enrollment_key(1)
        r = await http.post(a.api + "/v1/nodes/challenge", headers=bearer(enroll))
        assert r.status_code == 200, r.text
        challenge = r.json()
        # Both instances sign with the deployment's one key (from the database).
        r_b = await http.post(b.api + "/v1/nodes/challenge", headers=bearer(enroll))
        assert r_b.json()["server_key"] == challenge["server_key"]
        mac = keyproof.node_proof(node_key.raw, challenge["server_key"], challenge["nonce"])
        proof = {"nonce": challenge["nonce"], "mac": mac}
        r = await register(b, proof)
        assert r.status_code == 201, r.text
        await http.delete(
            deployment.api + f"/v1/nodes/{r.json()['node_id']}",
            headers=bearer(r.json()["node_token"]),
        )
        for inst in (a, b):  # the spent nonce is refused wherever the replay lands
            r = await register(inst, proof)
            assert r.status_code == 401, (inst.name, r.text)
            assert r.json()["error"] == "invalid_key_proof"
            assert "already used" in r.json()["message"]


async def test_a_revoked_client_is_refused_by_every_instance_within_1_s(
    deployment: Deployment, db: Database
) -> None:
    identity = IdentityService(db)
    name = unique("c-revoke")
    token = await identity.add_client(name)
    async with httpx.AsyncClient(timeout=5) as http:
        for inst in deployment.instances.values():  # both hold the credential in cache
            for _ in range(3):
                r = await http.get(inst.api + "/v1/nodes", headers=bearer(token))
                assert r.status_code == 200, r.text
        # Revoked behind every instance's back, as `bosonserver client revoke` does.
        await identity.mark_revoked(name)
        await asyncio.sleep(1.0)
        for inst in deployment.instances.values():
            r = await http.get(inst.api + "/v1/nodes", headers=bearer(token))
            assert r.status_code == 401, (inst.name, r.text)
            assert r.json()["error"] == "revoked_token"


async def test_a_node_stopped_on_one_instance_is_refused_by_all_and_its_link_closed(
    deployment: Deployment, db: Database
) -> None:
    async with httpx.AsyncClient(timeout=5) as http, attached_node(deployment, db, http) as node:
        other = other_than(deployment, await holder(db, node.node_id))
        beat = f"/v1/nodes/{node.node_id}/heartbeat"
        for inst in deployment.instances.values():
            r = await http.post(inst.api + beat, json={}, headers=bearer(node.token))
            assert r.status_code == 200, r.text
        r = await http.delete(other.api + f"/v1/nodes/{node.node_id}", headers=bearer(node.token))
        assert r.status_code in (200, 204), r.text
        closed = await asyncio.wait_for(node.link.wait_closed(), 5)
        assert closed.code == 4001  # the holder closed it, told by the other instance
        await asyncio.sleep(1.0)
        for inst in deployment.instances.values():
            r = await http.post(inst.api + beat, json={}, headers=bearer(node.token))
            assert r.status_code == 409, (inst.name, r.text)
            assert r.json()["error"] == "node_stopped"


async def test_a_command_lost_while_the_bus_is_down_is_repaired_and_the_bus_recovers(
    deployment: Deployment, db: Database
) -> None:
    client = await IdentityService(db).add_client(unique("c-bus"))
    async with httpx.AsyncClient(timeout=10) as http, attached_node(deployment, db, http) as node:
        other = other_than(deployment, await holder(db, node.node_id))
        deployment.kill("nats", signal.SIGTERM)
        started = time.monotonic()
        sid = (await route(http, other, client))["session_id"]  # the API does not need the bus
        # No bus: the holder learns it from the database (resync) and sends a full sync.
        await until(lambda: sid in node.synced(), 5, "sync repairs the lost peer_add")
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
        deployment.start_nats()
        # The instances reconnect by themselves; a command crosses again.
        sid2 = (await route(http, other, client))["session_id"]
        await until(
            lambda: sid2 in node.peers_of("peer_add") or sid2 in node.synced(),
            10,
            "command after the bus came back",
        )
        assert node.ups == 1, "the node's link never dropped"


async def test_postgresql_down_loses_nothing_and_everything_recovers_by_itself(
    deployment: Deployment, db: Database, pg_outage: PgOutage
) -> None:
    async with routed_across(deployment, db, "c-pg") as x:
        auth = bearer(x.client)
        pg_outage.stop()
        started = time.monotonic()
        try:
            down = await x.http.get(deployment.api + "/v1/nodes", headers=auth)
            # An outage is answered as one (retry later), never as a crash.
            assert down.status_code == 503, down.text
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
            for inst in deployment.instances.values():
                assert inst.proc is not None
                assert inst.proc.poll() is None, f"{inst.name} died with the database"
        finally:
            pg_outage.start()
            await db.engine.dispose()  # this test's own pool: its connections died
        fresh = {"client_public_key": key(), "mode": "relay"}

        async def routed() -> str | None:
            r = await x.http.post(x.other.api + "/v1/routes", json=fresh, headers=auth)
            return str(r.json()["session_id"]) if r.status_code == 201 else None

        took = await until(routed, 15, "routes again after the outage")
        print(f"routes again {took:.2f} s after PostgreSQL came back")
        # Nothing lost: the session opened before the outage is still open, the node
        # kept its link and gets commands across instances again.
        r = await x.http.get(deployment.api + f"/v1/sessions/{x.session_id}", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "open"
        assert x.node.ups == 1
        await until(
            lambda: len(x.node.peers_of("peer_add") | x.node.synced()) >= 2,
            10,
            "a command after the outage",
        )


async def test_killing_the_instance_holding_a_node_moves_its_link_to_the_other(
    deployment: Deployment, db: Database
) -> None:
    client = await IdentityService(db).add_client(unique("c-kill"))
    async with httpx.AsyncClient(timeout=10) as http, attached_node(deployment, db, http) as node:
        held = str(await holder(db, node.node_id))
        survivor = other_than(deployment, held)
        sid = (await route(http, survivor, client))["session_id"]
        # Last in the module: the deployment ends with one instance (no restart: seconds).
        deployment.kill(held)
        took = await until(
            lambda: _is(db, node.node_id, survivor.name), 10, "node reconnected to the survivor"
        )
        print(f"node link moved to {survivor.name} in {took:.2f} s")
        # Its open session came back with the sync on the new link.
        await until(lambda: sid in node.synced(), 5, "sync on the new link")
        # And the balancer answers from the survivor alone.
        r = await http.get(deployment.api + f"/v1/sessions/{sid}", headers=bearer(client))
        assert r.status_code == 200, r.text


async def _is(db: Database, node_id: str, instance: str) -> bool:
    return await holder(db, node_id) == instance
