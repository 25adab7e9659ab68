"""The node registry: registration, heartbeats, offline detection, deregistration.

Identity: a node *is* its WireGuard public key. Registering with an enrollment key (``hge_…``)
creates the node, or — when the public key is already known — re-registers that same node
(same id, same history) and issues it a new token. Registering with the node's own token
(``hgn_…``) re-registers without spending an enrollment use; the token can only speak for its
own node, so it may rotate that node's key but never take another node's key. Every
registration issues a new ``hgn_`` token and invalidates the previous one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from higgs.common.secrets import hash_token, new_token
from higgs.protocol.api import (
    AdminNode,
    AdminNodeList,
    HeartbeatRequest,
    HeartbeatResponse,
    NodeList,
    NodeRegisterRequest,
    NodeRegisterResponse,
    NodeSummary,
    node_address_v6,
)
from higgs.server.config import ServerSettings
from higgs.server.metrics import ServerMetrics
from higgs.server.relay.ports import RelayHub
from higgs.server.services import routing
from higgs.server.services.clock import new_node_id, utcnow
from higgs.server.services.errors import Conflict, Forbidden, NotFound, Unauthorized
from higgs.server.services.identity import IdentityService, NodeClaim
from higgs.server.services.keyproof import ChallengeService
from higgs.server.services.nodeview import NodeFacts, NodeView
from higgs.server.services.reachability import ReachabilityService, new_nonce
from higgs.server.services.sessions import SessionService
from higgs.server.services.usage import UsageService
from higgs.server.store import nodes as node_rows
from higgs.server.store.db import Database
from higgs.server.store.heartbeats import HeartbeatWrites
from higgs.server.store.states import NodeState
from higgs.server.store.tables import Node

__all__ = ["RegistryService", "admin_nodes"]

log = logging.getLogger(__name__)


class RegistryService:
    def __init__(
        self,
        db: Database,
        hub: RelayHub,
        settings: ServerSettings,
        metrics: ServerMetrics,
        nodes: NodeView,
        sessions: SessionService,
        identity: IdentityService | None = None,
    ) -> None:
        self.db = db
        self.hub = hub
        self.settings = settings
        self.metrics = metrics
        self.nodes = nodes
        self.sessions = sessions
        self.identity = identity
        self.relay_base = ""  # set by the server once the relay listener is bound
        self.challenges: ChallengeService | None = None  # set by the server (key proofs)
        self.reachability = ReachabilityService(db, sessions.nodes)
        self.writes = HeartbeatWrites(db)
        self.usage: UsageService | None = None  # issue 15: set by the server
        # Heartbeats missed while this process was not running are not the node's fault: a
        # node gets its full allowance counted from when the server could hear it again, so a
        # server restart does not take its nodes offline and fail their relayed clients over.
        self._started = time.monotonic()

    async def register(
        self, credential: str, req: NodeRegisterRequest, *, source: str | None = None
    ) -> tuple[NodeRegisterResponse, bool]:
        """Returns the answer and whether the node is new."""
        if self.challenges is not None:
            try:
                await self.challenges.verify(req.public_key, req.proof)
            except Unauthorized:
                self.metrics.registrations.labels(outcome="refused").inc()
                raise
        token = new_token("hgn_")
        now = utcnow()
        async with self.db.transaction() as s:
            by_key = await node_rows.by_public_key(s, req.public_key)
            enrollment_id: int | None = None
            if credential.startswith("hgn_"):
                node = await node_rows.by_token_hash(s, hash_token(credential))
                if node is None:
                    self.metrics.registrations.labels(outcome="refused").inc()
                    raise Unauthorized("invalid_token", "the node token is not valid")
                if by_key is not None and by_key.id != node.id:
                    self.metrics.registrations.labels(outcome="refused").inc()
                    raise Forbidden(
                        "forbidden",
                        "public_key belongs to another node; a node token speaks only for its node",
                    )
            elif credential.startswith("hge_"):
                try:
                    enrollment_id = await IdentityService.consume_enrollment_key(s, credential)
                except Unauthorized:
                    self.metrics.registrations.labels(outcome="refused").inc()
                    raise
                node = by_key
            else:
                raise Unauthorized(
                    "invalid_token", "register with an enrollment key (hge_…) or a node token"
                )
            created = node is None
            if node is None:
                node = Node(
                    id=new_node_id(),
                    registered_at=now,
                    metrics={},
                    enrollment_key_id=enrollment_id,
                )
                s.add(node)
            node.public_key = req.public_key
            node.token_hash = hash_token(token)
            node.endpoint = req.endpoint
            # A router mapping is offered only once a probe verified it (services.reachability).
            pm = req.port_mapping
            mapped = pm.external_endpoint if pm is not None and pm.method else None
            node.mapped_endpoint = mapped
            node.mapped_method = pm.method if mapped and pm is not None else None
            node.probe_nonce = new_nonce() if mapped else None
            node.mapped_verified_at = None
            probe_nonce = node.probe_nonce
            node.listen_port = req.listen_port
            node.tunnel_subnet = req.tunnel_subnet
            node.tunnel_subnet_v6 = req.tunnel_subnet_v6
            node.tunnel_mtu = req.tunnel_mtu
            node.max_clients = req.max_clients
            node.bandwidth_mbps = req.bandwidth_mbps
            node.country = req.country
            node.region = req.region
            node.version = req.version
            node.state = NodeState.ONLINE
            node.updated_at = now
            node.last_heartbeat_at = now
            node_id = node.id
            await s.flush()
            open_n = await node_rows.open_sessions(s, node_id)
            facts = NodeFacts(
                node_id=node_id,
                state=NodeState.ONLINE,
                public_key=req.public_key,
                endpoint=req.endpoint,
                tunnel_subnet=req.tunnel_subnet,
                tunnel_subnet_v6=req.tunnel_subnet_v6,
                tunnel_mtu=req.tunnel_mtu,
                max_clients=req.max_clients,
                bandwidth_mbps=req.bandwidth_mbps,
                country=req.country,
                region=req.region,
                open_sessions=open_n,
            )
            facts.mapped = mapped
            facts.apply_metrics(node.metrics)
        # The previous token stops working now, and routing sees the node as registered.
        if self.identity is not None:
            self.identity.forget_node(node_id)
        self.nodes.upsert(facts)
        self.hub.allow_node(node_id, hash_token(token))
        self.reachability.registered(node_id, mapped, probe_nonce, source=source)
        self.metrics.registrations.labels(outcome="created" if created else "renewed").inc()
        log.info("node registered", extra={"node_id": node_id, "new": created})
        return (
            NodeRegisterResponse(
                node_id=node_id,
                node_token=token,
                heartbeat_interval_s=self.settings.heartbeat_interval_s,
                relay_url=f"{self.relay_base}/v1/relay/node",
                tunnel_address=str(routing.node_address(req.tunnel_subnet)),
                tunnel_address_v6=(
                    str(node_address_v6(req.tunnel_subnet_v6)) if req.tunnel_subnet_v6 else None
                ),
            ),
            created,
        )

    async def heartbeat(
        self,
        node_id: str,
        req: HeartbeatRequest,
        *,
        source: str | None = None,
        claim: NodeClaim | None = None,
    ) -> HeartbeatResponse:
        """One UPDATE of the node (state, time, metrics; ``updated_at`` moves only when the
        node comes back), in one transaction with the renewal of sessions whose peers
        handshook, or, without those, with the other heartbeats that arrive meanwhile.
        Offline detection is not done here but by the periodic sweep (mark_stale_offline).

        ``claim``: the caller's token when the credential cache did not vouch for it; the
        UPDATE then proves it (Unauthorized/Forbidden when it matched no row for that)."""
        now = utcnow()
        metrics = req.model_dump(exclude={"peer_stats"}, exclude_none=True)
        metrics["peer_stats_count"] = len(req.peer_stats)
        fresh = self.sessions.fresh_keys(req.peer_stats)

        # A new tunnel MTU (the node's uplink changed) goes into route answers from now on.
        token_hash = claim.token_hash if claim is not None else None

        def refused(conn: Connection) -> None:
            # The UPDATE matched no row: say why, as a lookup first would have.
            if claim is not None:
                IdentityService.check_claim(conn, claim)
            state = node_rows.state_of(conn, node_id)
            if state is None:
                raise NotFound("node_not_found", f"node_id: no node {node_id}")
            raise Conflict("node_stopped", "the node deregistered; register again first")

        def unit(conn: Connection) -> Any:
            row = node_rows.heartbeat(conn, node_id, now, metrics, req.tunnel_mtu, token_hash)
            if row is None:
                refused(conn)
            self.sessions.renew_keys(conn, node_id, fresh)
            return row

        if fresh:  # the UPDATE and the renewal of the sessions whose peers handshook: one unit
            row = await self.db.run(unit)
        else:  # the UPDATE alone, in one transaction with the heartbeats arriving with it
            row = await self.writes.write(node_id, now, metrics, req.tunnel_mtu, token_hash)
            if row is None:
                await self.db.run(refused)
        if claim is not None and self.identity is not None:
            self.identity.node_proved(claim)
        if row.updated_at == now:
            log.info("node back online", extra={"node_id": node_id})
        self.nodes.heartbeat(node_id, metrics)
        if req.port_mapping is not None:
            pm = req.port_mapping
            await self.reachability.heartbeat(node_id, pm.external_endpoint if pm.method else None)
        if source is not None:
            await self.reachability.source(node_id, source)
        if self.usage is not None and req.peer_stats:  # issue 15: usage and quotas
            await self.usage.record(node_id, req.peer_stats)
        return HeartbeatResponse(
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
            state="online",
            relays=await self.sessions.udp_leases.targets(now),  # to time (protocol §5.5)
        )

    async def deregister(self, node_id: str) -> None:
        async with self.db.transaction() as s:
            node = await node_rows.for_update(s, node_id)
            if node is None:
                raise NotFound("node_not_found", f"node_id: no node {node_id}")
            node.state = NodeState.STOPPED
            node.updated_at = utcnow()
        self.nodes.remove(node_id)
        # Clients hear 4009 (fail over now) before their sessions close.
        self.hub.node_offline(node_id, "node stopped")
        await self.sessions.close_for_node(node_id, "node_stopped")
        self.hub.forget_node(node_id, "stopped")
        log.info("node deregistered", extra={"node_id": node_id})

    async def mark_stale_offline(self) -> list[str]:
        """The periodic offline sweep: online nodes that missed ``missed_heartbeats`` and have
        no link go offline (one query to find them, one UPDATE; heartbeats do no such work)."""
        limit = timedelta(
            seconds=self.settings.heartbeat_interval_s * self.settings.missed_heartbeats
        )
        if time.monotonic() - self._started < limit.total_seconds():
            return []
        now = utcnow()
        cutoff = now - limit
        async with self.db.begin() as conn:
            ids = await node_rows.stale_online(conn, cutoff)
            went = [i for i in ids if not self.hub.is_node_connected(i)]
            if went:
                went = await node_rows.mark_offline(conn, went, cutoff, now)
        for node_id in went:
            self.nodes.set_state(node_id, NodeState.OFFLINE)
            self.hub.node_offline(node_id, "node offline: missed heartbeats")
            self.metrics.nodes_went_offline.inc()
            log.warning("node offline: missed heartbeats", extra={"node_id": node_id})
        return went

    async def reload(self) -> int:
        """After a restart: nodes that are not stopped may open their links again."""
        async with self.db.transaction() as s:
            rows = await node_rows.live_tokens(s)
        for node_id, token_hash in rows:
            self.hub.allow_node(node_id, token_hash)
        return len(rows)

    async def _open_counts(self) -> dict[str, int]:
        return await _open_counts(self.db)

    async def list_for_clients(self) -> NodeList:
        counts = await self._open_counts()
        async with self.db.transaction() as s:
            rows = await node_rows.online(s)
        return NodeList(
            nodes=[
                NodeSummary(
                    node_id=n.id,
                    country=n.country,
                    region=n.region,
                    state=NodeState.ONLINE,
                    load=min(1.0, counts.get(n.id, 0) / n.max_clients),
                    bandwidth_mbps=n.bandwidth_mbps,
                    direct=n.endpoint is not None,
                )
                for n in rows
            ]
        )

    async def list_admin(self) -> AdminNodeList:
        return await admin_nodes(self.db, self.hub.is_node_connected)

    async def refresh_gauges(self) -> None:
        async with self.db.transaction() as s:
            by_state = await node_rows.state_counts(s)
            open_n = await node_rows.open_total(s)
        for state in NodeState:
            self.metrics.nodes.labels(state=state).set(by_state.get(state, 0))
        self.metrics.sessions_open.set(open_n)


async def _open_counts(db: Database) -> dict[str, int]:
    async with db.transaction() as s:
        return await node_rows.open_counts(s)


async def admin_nodes(db: Database, is_connected: Callable[[str], bool]) -> AdminNodeList:
    """Every node with its details (the admin API and ``bosonserver nodes``)."""
    counts = await _open_counts(db)
    async with db.transaction() as s:
        rows = await node_rows.by_registration(s)
    return AdminNodeList(
        nodes=[
            AdminNode(
                node_id=n.id,
                public_key=n.public_key,
                state=n.state,
                connected=is_connected(n.id),
                endpoint=n.endpoint,
                listen_port=n.listen_port,
                tunnel_subnet=n.tunnel_subnet,
                tunnel_subnet_v6=n.tunnel_subnet_v6,
                tunnel_mtu=n.tunnel_mtu,
                max_clients=n.max_clients,
                bandwidth_mbps=n.bandwidth_mbps,
                country=n.country,
                region=n.region,
                version=n.version,
                open_sessions=counts.get(n.id, 0),
                registered_at=n.registered_at,
                last_heartbeat_at=n.last_heartbeat_at,
                metrics=n.metrics or {},
            )
            for n in rows
        ]
    )
