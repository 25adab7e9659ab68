"""What the scale-out tests share: a node played by the node's own link (``FakeNode``), the
test process's clients, and the steps that attach a node and route to it across instances."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from higgs.common.keys import PrivateKey
from higgs.server.services.identity import IdentityService
from higgs.server.store.db import Database
from higgs.server.store.tables import NodePresence
from higgs.transport.relay_link import RelayLink
from tests.integration.scaleout.conftest import Deployment, Instance


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

    def hub_link(self, hub: str) -> RelayLink:
        """A data link to a relay host's hub (``relay_hub`` of a peer), as the node's
        ``HubLinks`` opens it; its datagrams land in :attr:`data` too."""
        link = RelayLink(
            hub + "/v1/relay/node",
            self.token,
            on_data=lambda ch, dgs: self.data.extend((ch, bytes(d)) for d in dgs),
            ping_interval_s=2,
            dead_after_s=6,
            admission_wait_s=10,
        )
        link.start()
        return link

    def peer(self, session_id: str) -> dict[str, Any] | None:
        """The session's peer as the node last heard it (``peer_add`` or ``sync``)."""
        found = None
        for m in self.messages:
            if m.get("type") == "peer_add" and m["session_id"] == session_id:
                found = m
            elif m.get("type") == "sync":
                found = next((p for p in m["peers"] if p["session_id"] == session_id), None)
        return found

    def peers_of(self, kind: str) -> set[str]:
        return {m["session_id"] for m in self.messages if m.get("type") == kind}

    def synced(self) -> set[str]:
        out: set[str] = set()
        for m in self.messages:
            if m.get("type") == "sync":
                out = {p["session_id"] for p in m["peers"]}
        return out


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


async def route(
    http: httpx.AsyncClient, inst: Instance, client: str, **extra: Any
) -> dict[str, Any]:
    """A relayed route asked of ``inst`` (``extra``: more fields of the request); its answer.
    An instance that did not register the node routes to it once its routing view is reloaded
    (every reconciliation, 0.5 s here): ``no_route`` is asked again for a few
    reconciliations, anything else fails at once."""
    body = {"client_public_key": key(), "mode": "relay", **extra}
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


async def relayed_data_flows(
    node: FakeNode, url: str, relay: dict[str, Any], node_link: RelayLink | None = None
) -> None:
    """A client's session link to ``url`` carries datagrams to the node and back (the node
    sends on ``node_link``, by default its control link)."""
    channel: int = relay["channel"]
    got: list[bytes] = []
    link = RelayLink(
        url,
        relay["token"],
        on_data=lambda _ch, dgs: got.extend(bytes(d) for d in dgs),
        ping_interval_s=2,
        dead_after_s=6,
        admission_wait_s=3,  # a relay host's hub admits at its next database read
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
        back = node_link or node.link
        await until(lambda: sent(back, down, lambda: down in got), 5, f"{url}: to the client")
    finally:
        await link.close()
