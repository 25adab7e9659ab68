"""Session bookkeeping without sockets or root: open, renew, close and expire on a real SQLite
file, with a recording hub standing in for the relay. Each change commits, then is announced
to the hub and the node exactly once, and the node view follows it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from higgs.common.keys import PrivateKey
from higgs.common.secrets import hash_token
from higgs.protocol.api import NodeRegisterRequest, RouteRequest
from higgs.server.config import ServerSettings
from higgs.server.metrics import ServerMetrics
from higgs.server.services.clock import utcnow
from higgs.server.services.errors import Conflict, NotFound
from higgs.server.services.identity import AuthedClient, IdentityService
from higgs.server.services.nodeview import NodeView, refresh_view
from higgs.server.services.registry import RegistryService
from higgs.server.services.sessions import SessionService
from higgs.server.store import sessions as store
from higgs.server.store.db import Database
from higgs.server.store.open import open_database
from higgs.server.store.sessions import close_open_sessions
from higgs.server.store.tables import Session as SessionRow


@dataclass
class Hub:
    """Records what the services tell the relay hub; every node has a link."""

    opened: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    closed: list[tuple[str, str]] = field(default_factory=list)
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    allowed: dict[str, str] = field(default_factory=dict)
    bridged: dict[str, str | None] = field(default_factory=dict)

    def allow_node(self, node_id: str, token_hash: str) -> None:
        self.allowed[node_id] = token_hash

    def forget_node(self, node_id: str, reason: str) -> None:
        self.allowed.pop(node_id, None)

    def open_session(self, session_id: str, channel: int, node_id: str, token_hash: str) -> None:
        self.opened[session_id] = (channel, node_id, token_hash)

    def close_session(self, session_id: str, reason: str) -> None:
        self.closed.append((session_id, reason))

    def bridge_session(self, session_id: str, endpoint: str | None) -> None:
        self.bridged[session_id] = endpoint

    async def send_control(self, node_id: str, message: dict[str, Any]) -> bool:
        self.sent.append((node_id, message))
        return True

    def is_node_connected(self, node_id: str) -> bool:
        return True

    def node_offline(self, node_id: str, reason: str) -> None:
        self.allowed.pop(node_id, None)

    def session_counters(self, session_id: str) -> tuple[int, int]:
        return (0, 0)

    def types(self, kind: str) -> list[dict[str, Any]]:
        return [m for _, m in self.sent if m["type"] == kind]


@dataclass
class World:
    db: Database
    hub: Hub
    nodes: NodeView
    settings: ServerSettings
    sessions: SessionService
    registry: RegistryService
    identity: IdentityService

    async def node(self) -> str:
        key = await self.identity.create_enrollment_key(1)
        req = NodeRegisterRequest(
            public_key=PrivateKey.generate().public_b64(),
            listen_port=51820,
            endpoint="127.0.0.1:51820",
            tunnel_subnet="10.77.0.0/24",
            max_clients=4,
            country="DE",
            version="0.1.0",
        )
        answer, _ = await self.registry.register(key, req)
        return answer.node_id

    async def client(self, name: str) -> AuthedClient:
        return await self.identity.authenticate_client(await self.identity.add_client(name))


def new_key() -> str:
    return PrivateKey.generate().public_b64()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    settings = ServerSettings(data_dir=tmp_path, session_ttl_s=600)
    db = await open_database(settings, auto_migrate=True)
    hub = Hub()
    nodes = NodeView()
    metrics = ServerMetrics()
    identity = IdentityService(db)
    sessions = SessionService(db, hub, nodes, settings, metrics)
    registry = RegistryService(db, hub, settings, metrics, nodes, sessions, identity)
    try:
        yield World(db, hub, nodes, settings, sessions, registry, identity)
    finally:
        await db.dispose()


async def test_open_admits_announces_and_counts_once(world: World) -> None:
    node_id = await world.node()
    alice = await world.client("alice")
    key = new_key()
    answer = await world.sessions.create_route(alice, RouteRequest(client_public_key=key))
    sid = answer.session_id
    assert answer.node.node_id == node_id
    assert answer.relay is not None
    channel, on_node, token_hash = world.hub.opened[sid]
    assert (channel, on_node) == (answer.relay.channel, node_id)
    assert token_hash == hash_token(answer.relay.token)  # the hub gets only the hash
    (add,) = world.hub.types("peer_add")
    assert add == {
        "type": "peer_add",
        "session_id": sid,
        "channel": channel,
        "public_key": key,
        "address": answer.wireguard.address,
        "relayed": True,
    }
    facts = world.nodes.get(node_id)
    assert facts is not None
    assert facts.open_sessions == 1
    assert sid in world.sessions.announcer.ledger


async def test_renew_moves_the_expiry_of_an_open_session_only(world: World) -> None:
    await world.node()
    alice, bob = await world.client("alice"), await world.client("bob")
    answer = await world.sessions.create_route(alice, RouteRequest(client_public_key=new_key()))
    sid = answer.session_id
    async with world.db.begin() as conn:
        soon = utcnow() + timedelta(seconds=5)
        await conn.execute(update(SessionRow).where(SessionRow.id == sid).values(expires_at=soon))
    renewed = await world.sessions.renew(alice, sid)
    assert renewed.expires_at > utcnow() + timedelta(seconds=590)
    with pytest.raises(NotFound):
        await world.sessions.renew(bob, sid)  # another client's: missing, not forbidden
    closed = await world.sessions.close(alice, sid)
    with pytest.raises(Conflict, match="is closed \\(client_closed\\)"):
        await world.sessions.renew(alice, sid)
    assert (await world.sessions.get(alice, sid)).expires_at == closed.expires_at


async def test_close_announces_once_and_answers_a_second_close_as_it_is(world: World) -> None:
    node_id = await world.node()
    alice = await world.client("alice")
    answer = await world.sessions.create_route(alice, RouteRequest(client_public_key=new_key()))
    sid = answer.session_id
    first = await world.sessions.close(alice, sid)
    second = await world.sessions.close(alice, sid)
    assert (first.state, second.state) == ("closed", "closed")
    assert second.close_reason == "client_closed"
    assert world.hub.closed == [(sid, "client_closed")]
    assert [m["session_id"] for m in world.hub.types("peer_remove")] == [sid]
    facts = world.nodes.get(node_id)
    assert facts is not None
    assert facts.open_sessions == 0
    assert sid not in world.sessions.announcer.ledger
    assert await world.sessions.reconcile() == 0  # nothing left to announce


async def test_expiry_closes_due_sessions_once(world: World) -> None:
    await world.node()
    alice = await world.client("alice")
    due = await world.sessions.create_route(alice, RouteRequest(client_public_key=new_key()))
    live = await world.sessions.create_route(alice, RouteRequest(client_public_key=new_key()))
    async with world.db.begin() as conn:
        past = utcnow() - timedelta(seconds=1)
        await conn.execute(
            update(SessionRow).where(SessionRow.id == due.session_id).values(expires_at=past)
        )
    assert await world.sessions.expire_due() == 1
    assert await world.sessions.expire_due() == 0
    assert world.hub.closed == [(due.session_id, "expired")]
    info = await world.sessions.get(alice, live.session_id)
    assert info.state == "open"


async def test_relay_activity_renews_at_the_next_sweep(world: World) -> None:
    await world.node()
    alice = await world.client("alice")
    answer = await world.sessions.create_route(alice, RouteRequest(client_public_key=new_key()))
    sid = answer.session_id
    async with world.db.begin() as conn:
        past = utcnow() - timedelta(seconds=1)
        await conn.execute(update(SessionRow).where(SessionRow.id == sid).values(expires_at=past))
    world.sessions.note_activity(sid)
    assert await world.sessions.expire_due() == 0  # the activity was written first
    assert (await world.sessions.get(alice, sid)).state == "open"


async def test_a_close_made_elsewhere_is_announced_exactly_once(world: World) -> None:
    await world.node()
    alice = await world.client("alice")
    answer = await world.sessions.create_route(alice, RouteRequest(client_public_key=new_key()))
    sid = answer.session_id
    # What `bosonserver client revoke` does: the database only.
    await close_open_sessions(world.db, "client_revoked", SessionRow.client_id == alice.id)
    assert world.hub.closed == []
    assert await world.sessions.reconcile() == 1
    assert await world.sessions.reconcile() == 0
    assert world.hub.closed == [(sid, "client_revoked")]
    assert len(world.hub.types("peer_remove")) == 1


async def test_a_close_path_that_claimed_first_is_not_doubled_by_reconcile(world: World) -> None:
    await world.node()
    alice = await world.client("alice")
    answer = await world.sessions.create_route(alice, RouteRequest(client_public_key=new_key()))
    sid = answer.session_id

    def reconcile_sees_it_closed(rows: Any) -> None:
        # Inside the closing transaction: the close path claims before it commits.
        assert world.sessions.announcer.ledger.claim(r.id for r in rows) == [sid]

    await close_open_sessions(
        world.db, "node_stopped", SessionRow.id == sid, before_commit=reconcile_sees_it_closed
    )
    assert await world.sessions.reconcile() == 0  # the claimer announces, not reconcile


async def test_a_reconcile_racing_a_close_does_not_double_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.node()
    alice = await world.client("alice")
    answer = await world.sessions.create_route(alice, RouteRequest(client_public_key=new_key()))
    sid = answer.session_id
    await close_open_sessions(world.db, "client_revoked", SessionRow.id == sid)
    real = store.closed_among

    async def then_a_close_path_claims(db: Database, ids: Any) -> list[SessionRow]:
        rows = await real(db, ids)  # reconcile saw the row closed …
        assert world.sessions.announcer.ledger.claim([sid]) == [sid]  # … a closer claims
        return rows

    monkeypatch.setattr(store, "closed_among", then_a_close_path_claims)
    assert await world.sessions.reconcile() == 0
    assert world.hub.closed == []  # left to the claimer


async def test_a_replaced_session_is_claimed_before_its_close_commits(world: World) -> None:
    await world.node()
    alice = await world.client("alice")
    key = new_key()
    await world.sessions.create_route(alice, RouteRequest(client_public_key=key))
    opened = await world.sessions.opener.open(alice, RouteRequest(client_public_key=key))
    assert opened.replaced is not None
    # A sweep between the commit and the route's own announcement must not announce it.
    assert await world.sessions.reconcile() == 0


async def test_same_key_again_replaces_the_callers_own_session(world: World) -> None:
    node_id = await world.node()
    alice = await world.client("alice")
    key = new_key()
    old = await world.sessions.create_route(alice, RouteRequest(client_public_key=key))
    new = await world.sessions.create_route(alice, RouteRequest(client_public_key=key))
    assert world.hub.closed == [(old.session_id, "replaced")]
    assert (await world.sessions.get(alice, old.session_id)).close_reason == "replaced"
    facts = world.nodes.get(node_id)
    assert facts is not None
    assert facts.open_sessions == 1
    assert set(world.hub.opened) == {old.session_id, new.session_id}


async def test_another_clients_key_makes_a_named_node_refuse(world: World) -> None:
    node_id = await world.node()
    alice, bob = await world.client("alice"), await world.client("bob")
    key = new_key()
    await world.sessions.create_route(alice, RouteRequest(client_public_key=key))
    with pytest.raises(Conflict, match="already used"):
        await world.sessions.create_route(bob, RouteRequest(client_public_key=key, node_id=node_id))


async def test_a_restart_readmits_open_sessions_and_rebuilds_the_view(world: World) -> None:
    node_id = await world.node()
    alice = await world.client("alice")
    kept = await world.sessions.create_route(alice, RouteRequest(client_public_key=new_key()))
    gone = await world.sessions.create_route(alice, RouteRequest(client_public_key=new_key()))
    await world.sessions.close(alice, gone.session_id)
    hub, nodes = Hub(), NodeView()
    restarted = SessionService(world.db, hub, nodes, world.settings, ServerMetrics())
    assert await refresh_view(nodes, world.db) == 1
    assert await restarted.reload() == 1
    assert set(hub.opened) == {kept.session_id}
    facts = nodes.get(node_id)
    assert facts is not None
    assert facts.open_sessions == 1
    await restarted.sync_node(node_id)
    (sync,) = hub.types("sync")
    assert [p["session_id"] for p in sync["peers"]] == [kept.session_id]
