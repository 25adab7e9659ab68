"""Relay hosts on a real SQLite file (no sockets): a session's lease goes to the host with
the smallest sum of the client's and the node's RTT; when that host stops heartbeating its
sessions move to a live one, the node gets a ``sync`` with the new endpoint, and the client
sees it in its session (``udp_relay``). A host that serves the WebSocket hub relays the
WebSocket leg of the sessions leased on it: both the client and the node are sent there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from higgs.common.keys import PrivateKey
from higgs.protocol.api import HeartbeatRequest, NodeRegisterRequest, RouteRequest, RouteResponse
from higgs.server.admin.relay_hosts import host_rows
from higgs.server.config import ServerSettings
from higgs.server.metrics import ServerMetrics
from higgs.server.relay.host_hub import read_admissions
from higgs.server.services.clock import utcnow
from higgs.server.services.identity import AuthedClient, IdentityService
from higgs.server.services.nodeview import NodeView
from higgs.server.services.registry import RegistryService
from higgs.server.services.relay_failover import RelayFailover
from higgs.server.services.sessions import SessionService
from higgs.server.store import relay_hosts
from higgs.server.store.db import Database
from higgs.server.store.open import open_database

from .test_session_lifecycle import Hub

NEAR, FAR = "192.0.2.10", "192.0.2.20"
NEAR_HUB, FAR_HUB = "wss://near.example:8081", "wss://far.example:8081"


@dataclass
class World:
    db: Database
    hub: Hub
    sessions: SessionService
    registry: RegistryService
    identity: IdentityService

    async def beat(
        self, address: str, *, ago_s: float = 0.0, leased: int = 0, ws_url: str | None = None
    ) -> None:
        async with self.db.begin() as conn:
            await relay_hosts.beat(
                conn,
                address,
                ports="40000-40009",
                probe_port=39999,
                ws_url=ws_url,
                stats={"ports_leased": leased, "ports_total": 10, "drops": {"stale": 2}},
                now=utcnow() - timedelta(seconds=ago_s),
            )
        self.sessions.udp_leases._cache = None  # the test moves the clock, not the cache

    async def node(self) -> str:
        key = await self.identity.create_enrollment_key(1)
        req = NodeRegisterRequest(
            public_key=PrivateKey.generate().public_b64(),
            listen_port=51820,
            tunnel_subnet="10.77.0.0/24",
            max_clients=4,
            version="0.1.0",
        )
        answer, _ = await self.registry.register(key, req)
        return answer.node_id

    async def client(self) -> AuthedClient:
        return await self.identity.authenticate_client(await self.identity.add_client("c"))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    settings = ServerSettings(data_dir=tmp_path, relay_host_dead_after_s=5.0)
    db = await open_database(settings, auto_migrate=True)
    hub, nodes, metrics = Hub(), NodeView(), ServerMetrics()
    identity = IdentityService(db)
    sessions = SessionService(db, hub, nodes, settings, metrics)
    registry = RegistryService(db, hub, settings, metrics, nodes, sessions, identity)
    try:
        yield World(db, hub, sessions, registry, identity)
    finally:
        await db.dispose()


async def test_the_lease_goes_to_the_host_nearest_both_ends(world: World) -> None:
    await world.beat(NEAR)
    await world.beat(FAR)
    node_id = await world.node()
    answer = await world.registry.heartbeat(
        node_id, HeartbeatRequest(relay_rtt_ms={NEAR: 40.0, FAR: 10.0})
    )
    assert {r.address for r in answer.relays} == {NEAR, FAR}  # what the node is to time
    client = await world.client()
    # The client is far nearer to NEAR: 5 + 40 beats 90 + 10.
    route = await world.sessions.create_route(
        client,
        RouteRequest(
            client_public_key=PrivateKey.generate().public_b64(),
            node_id=node_id,
            mode="relay",
            relay_rtt_ms={NEAR: 5.0, FAR: 90.0},
        ),
    )
    assert route.udp_relay is not None
    assert route.udp_relay.endpoint.startswith(f"{NEAR}:")
    peer_add = world.hub.types("peer_add")[-1]
    assert peer_add["relay_endpoint"] == route.udp_relay.endpoint  # both legs pinned there


async def test_a_dead_hosts_sessions_move_and_node_and_client_are_told(world: World) -> None:
    await world.beat(NEAR)
    await world.beat(FAR)
    node_id = await world.node()
    client = await world.client()
    route = await world.sessions.create_route(
        client,
        RouteRequest(
            client_public_key=PrivateKey.generate().public_b64(),
            node_id=node_id,
            mode="relay",
            relay_rtt_ms={NEAR: 1.0, FAR: 50.0},
        ),
    )
    assert route.udp_relay is not None
    assert route.udp_relay.endpoint.startswith(f"{NEAR}:")
    failover = RelayFailover(world.sessions)
    assert (await failover.run_once()).moved == {}  # both hosts alive: nothing moves

    await world.beat(NEAR, ago_s=6.0)  # NEAR stopped heartbeating 6 s ago (dead after 5 s)
    done = await failover.run_once()
    assert done.dead == [NEAR]
    moved = done.moved[route.session_id]
    assert moved.startswith(f"{FAR}:")
    sync = world.hub.types("sync")[-1]
    assert [p["relay_endpoint"] for p in sync["peers"]] == [moved]
    info = await world.sessions.get(client, route.session_id)
    assert info.udp_relay is not None
    assert info.udp_relay.endpoint == moved
    assert (await failover.run_once()).moved == {}  # moved once, not again

    async with world.db.begin() as conn:
        rows = host_rows(await conn.run_sync(relay_hosts.all_hosts), utcnow(), 5.0)
    assert [(r[0], r[1], r[5]) for r in rows] == [
        (NEAR, "down (no heartbeat)", "stale 2"),
        (FAR, "up", "stale 2"),
    ]


async def test_with_no_other_live_host_the_session_stays_and_is_reported(world: World) -> None:
    await world.beat(NEAR)
    node_id = await world.node()
    client = await world.client()
    route = await world.sessions.create_route(
        client,
        RouteRequest(
            client_public_key=PrivateKey.generate().public_b64(), node_id=node_id, mode="relay"
        ),
    )
    assert route.udp_relay is not None
    await world.beat(NEAR, ago_s=60.0)
    done = await RelayFailover(world.sessions).run_once()
    assert done.stranded == [route.session_id]
    assert done.moved == {}
    info = await world.sessions.get(client, route.session_id)
    assert info.udp_relay is not None
    assert info.udp_relay.endpoint == route.udp_relay.endpoint


async def test_a_full_host_is_skipped(world: World) -> None:
    await world.beat(NEAR, leased=10)  # all 10 ports taken, as the host reported
    await world.beat(FAR)
    node_id = await world.node()
    route = await world.sessions.create_route(
        await world.client(),
        RouteRequest(
            client_public_key=PrivateKey.generate().public_b64(),
            node_id=node_id,
            mode="relay",
            relay_rtt_ms={NEAR: 1.0, FAR: 90.0},
        ),
    )
    assert route.udp_relay is not None
    assert route.udp_relay.endpoint.startswith(f"{FAR}:")


async def relayed_route(
    world: World, node_id: str, rtt: dict[str, float], client: AuthedClient | None = None
) -> RouteResponse:
    return await world.sessions.create_route(
        client or await world.client(),
        RouteRequest(
            client_public_key=PrivateKey.generate().public_b64(),
            node_id=node_id,
            mode="relay",
            relay_rtt_ms=rtt,
        ),
    )


async def test_both_websocket_legs_go_to_the_hub_of_the_host_nearest_both_ends(
    world: World,
) -> None:
    world.sessions.relay_base = "ws://instance:8081"
    await world.beat(NEAR, ws_url=NEAR_HUB)
    await world.beat(FAR, ws_url=FAR_HUB)
    node_id = await world.node()
    await world.registry.heartbeat(node_id, HeartbeatRequest(relay_rtt_ms={NEAR: 40.0, FAR: 10.0}))
    # 5 + 40 beats 90 + 10: NEAR carries both the UDP lease and the WebSocket legs.
    client = await world.client()
    route = await relayed_route(world, node_id, {NEAR: 5.0, FAR: 90.0}, client)
    assert route.relay is not None
    assert route.relay.url == f"{NEAR_HUB}/v1/relay/session"
    peer_add = world.hub.types("peer_add")[-1]
    assert peer_add["relay_hub"] == NEAR_HUB
    # The instance's hub does not bridge it: the client's frames never reach that hub.
    assert world.hub.bridged[route.session_id] is None
    # The relay host's hub admits exactly this session and its node, by the same hashes.
    wanted = await read_admissions(world.db, NEAR)
    assert wanted.sessions == {route.session_id: world.hub.opened[route.session_id]}
    assert wanted.nodes == {node_id: world.hub.allowed[node_id]}
    assert (await read_admissions(world.db, FAR)).sessions == {}

    info = await world.sessions.get(client, route.session_id)
    assert info.relay_url == f"{NEAR_HUB}/v1/relay/session"

    # NEAR dies: the session and its node's hub move to FAR in one sync; the client sees the
    # new hub in its session.
    await world.beat(NEAR, ago_s=6.0, ws_url=NEAR_HUB)
    await RelayFailover(world.sessions).run_once()
    (peer,) = world.hub.types("sync")[-1]["peers"]
    assert peer["relay_hub"] == FAR_HUB
    info = await world.sessions.get(client, route.session_id)
    assert info.relay_url == f"{FAR_HUB}/v1/relay/session"
    assert set((await read_admissions(world.db, FAR)).sessions) == {route.session_id}
    assert (await read_admissions(world.db, NEAR)).sessions == {}

    # A closed session is no longer admitted anywhere.
    await world.sessions.close_where("client_closed")
    assert (await read_admissions(world.db, FAR)).sessions == {}


async def test_without_a_host_hub_the_websocket_leg_stays_on_the_instance(world: World) -> None:
    world.sessions.relay_base = "ws://instance:8081"
    await world.beat(NEAR)  # UDP only: no ws_url
    await world.beat(FAR, ws_url=FAR_HUB, ago_s=60.0)  # a hub, but its host is down
    node_id = await world.node()
    route = await relayed_route(world, node_id, {NEAR: 5.0})
    assert route.relay is not None
    assert route.relay.url == "ws://instance:8081/v1/relay/session"
    assert route.udp_relay is not None
    peer_add = world.hub.types("peer_add")[-1]
    assert "relay_hub" not in peer_add  # the wire of older nodes, unchanged
    assert world.hub.bridged[route.session_id] == route.udp_relay.endpoint  # as before
