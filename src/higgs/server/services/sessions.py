"""Sessions: opening a route, renewing, closing and expiring it.

The database is the truth: every change commits first (through :mod:`higgs.server.store.
sessions`) and is announced afterwards (:mod:`higgs.server.services.announce`, exactly once
per close thanks to its ledger). Choosing the node and inserting the row is
:mod:`higgs.server.services.opening`; the answer is built by :mod:`higgs.server.services.
answers`.

Lifecycle hook points: every session this process opens passes through :meth:`SessionService.
_opened` once, after its row committed and before the route answer is built; every close, by
whatever path (the client's ``DELETE``, ``replaced``, ``expired``, ``node_stopped``,
``client_revoked``, or a close found by :meth:`SessionService.reconcile`), passes through
:meth:`SessionService._closed` once per session. Sessions still open at a restart are
re-admitted by :meth:`SessionService.reload`.

A device's session (issue 18, :mod:`higgs.server.services.devices`) never expires and
outlives its node's deregistration: the sweep and :meth:`SessionService.close_for_node` skip
it, and ``sync`` keeps telling the node its UDP relay endpoint even once the node has a
direct one (the exported config names the relay port).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy import ColumnElement, Connection

from higgs.protocol.api import (
    AdminSessionList,
    PeerStat,
    RouteRequest,
    RouteResponse,
    SessionInfo,
    UdpRelayPath,
)
from higgs.server.config import ServerSettings
from higgs.server.metrics import ServerMetrics
from higgs.server.relay.ports import RelayHub
from higgs.server.services.announce import Announcer
from higgs.server.services.answers import (
    SESSION_RELAY_PATH,
    Counters,
    admin_session_list,
    route_answer,
    session_info,
)
from higgs.server.services.clock import utcnow
from higgs.server.services.errors import Conflict, NotFound
from higgs.server.services.identity import AuthedClient
from higgs.server.services.nodeview import NodeFacts, NodeView
from higgs.server.services.opening import SessionOpener
from higgs.server.services.relay_leases import UdpLeases
from higgs.server.store import sessions as store
from higgs.server.store.db import Database
from higgs.server.store.devices import device_session_ids, sessions_of_devices
from higgs.server.store.states import SessionState
from higgs.server.store.tables import Session as SessionRow

__all__ = ["SessionService", "admin_sessions", "fresh_keys"]

log = logging.getLogger(__name__)


def fresh_keys(stats: Sequence[PeerStat], fresh_s: float) -> list[str]:
    """Peers that handshook within ``fresh_s`` are in use (possibly on the direct path)."""
    return [
        p.public_key
        for p in stats
        if p.last_handshake_s is not None and p.last_handshake_s <= fresh_s
    ]


class SessionService:
    def __init__(
        self,
        db: Database,
        hub: RelayHub,
        nodes: NodeView,
        settings: ServerSettings,
        metrics: ServerMetrics,
    ) -> None:
        self.db = db
        self.hub = hub
        self.nodes = nodes
        self.settings = settings
        self.metrics = metrics
        self.relay_base = ""  # set by the server once the relay listener is bound
        # Scale-out: the relay base of the instance holding a node's link (a relayed client
        # must attach there); None = this server's own (docs/scaleout.md).
        self.relay_base_of: Callable[[str], str | None] | None = None
        self.announcer = Announcer(hub)
        self.opener = SessionOpener(
            db, nodes, hub.is_node_connected, self.announcer.ledger, metrics, lambda: self.ttl
        )
        self.udp_leases = UdpLeases(db, settings)  # UDP relay ports (issue 11)
        self._active: set[str] = set()

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.session_ttl_s)

    # --- the lifecycle hook points ----------------------------------------------------------

    async def _opened(
        self,
        row: SessionRow,
        facts: NodeFacts,
        client: AuthedClient,
        relay_endpoint: str | None = None,
        relay_hub: str | None = None,
    ) -> None:
        """Once per session this process opened, after its row committed (with the UDP relay
        endpoint the node is to use for it and its relay host's hub, if any)."""
        self.nodes.session_opened(facts.node_id)
        self.announcer.admit(row)
        self.metrics.sessions_opened.inc()
        log.info(
            "session opened",
            extra={"session_id": row.id, "node_id": facts.node_id, "client": client.name},
        )
        await self.announcer.opened(row, relay_endpoint, relay_hub)

    async def _closed(self, rows: Sequence[SessionRow], reason: str) -> None:
        """Once per closed session, after the close committed (whichever path closed it)."""
        for row in rows:
            self.nodes.session_closed(row.node_id)
            self.metrics.sessions_closed.labels(reason=reason).inc()
            log.info(
                "session closed",
                extra={"session_id": row.id, "node_id": row.node_id, "reason": reason},
            )
            await self.announcer.closed(row, reason)

    # --- opening ----------------------------------------------------------------------------

    async def create_route(self, client: AuthedClient, req: RouteRequest) -> RouteResponse:
        opened = await self.opener.open(client, req)
        if opened.replaced is not None:
            await self._closed([opened.replaced], "replaced")
        udp_relay = await self.udp_leases.lease(
            opened.row, opened.row.created_at, req.relay_rtt_ms, opened.facts.relay_rtt_ms
        )
        relay_endpoint = UdpLeases.for_node(
            udp_relay.endpoint if udp_relay else None, opened.facts.endpoint
        )
        # Leased on a relay host that serves the WebSocket hub: both legs meet on that hub.
        hub = None
        if udp_relay is not None:
            hub = (await self.udp_leases.hubs([opened.row.id], utcnow())).get(opened.row.id)
        await self._opened(opened.row, opened.facts, client, relay_endpoint, hub)
        return route_answer(
            opened.row,
            opened.facts,
            opened.token,
            ttl_s=self.settings.session_ttl_s,
            relay_base=hub or self._relay_base(opened.row.node_id),
            udp_relay=udp_relay,
        )

    def _relay_base(self, node_id: str) -> str:
        if self.relay_base_of is None:
            return self.relay_base
        return self.relay_base_of(node_id) or self.relay_base

    async def announce_opened(
        self,
        row: SessionRow,
        facts: NodeFacts,
        client: AuthedClient,
        relay_endpoint: str | None = None,
    ) -> None:
        """The lifecycle hook for a session opened by another service (a device's)."""
        await self._opened(row, facts, client, relay_endpoint)

    async def announce_closed(self, rows: Sequence[SessionRow], reason: str) -> None:
        await self._closed(rows, reason)

    async def reload(self) -> int:
        """After a restart: every open session is admitted to the hub again."""
        rows = await store.open_rows(self.db)
        for row in rows:
            self.announcer.admit(row)
        return len(rows)

    async def sync_node(self, node_id: str) -> None:
        """The node's link came up: send it its open sessions."""
        rows = await store.open_rows(self.db, node_id)
        udp = await self.udp_leases.endpoints([r.id for r in rows])
        facts = self.nodes.get(node_id)
        node_endpoint = facts.endpoint if facts else None
        devices = await sessions_of_devices(self.db, [r.id for r in rows])
        relay = {
            r.id: udp.get(r.id)
            if r.id in devices
            else UdpLeases.for_node(udp.get(r.id), node_endpoint)
            for r in rows
        }
        # A device is a stock app on its UDP relay port: no WebSocket leg to carry.
        hubs = await self.udp_leases.hubs([r.id for r in rows if r.id not in devices], utcnow())
        await self.announcer.sync(node_id, rows, relay, hubs)

    # --- reading ----------------------------------------------------------------------------

    def info(self, row: SessionRow) -> SessionInfo:
        return session_info(row, self.hub.session_counters)

    async def _with_relay(self, row: SessionRow) -> SessionInfo:
        """The session with its UDP relay endpoint now (it moves when a relay host dies)."""
        info = self.info(row)
        if row.state != SessionState.OPEN or row.mode == "direct":
            return info
        endpoint = (await self.udp_leases.endpoints([row.id])).get(row.id)
        if endpoint is None:
            return info
        hub = (await self.udp_leases.hubs([row.id], utcnow())).get(row.id)
        return info.model_copy(
            update={
                "udp_relay": UdpRelayPath(endpoint=endpoint),
                "relay_url": f"{hub}{SESSION_RELAY_PATH}" if hub else None,
            }
        )

    async def get(self, client: AuthedClient, session_id: str) -> SessionInfo:
        row = await store.session_by_id(self.db, session_id)
        # Another client's session is reported as missing, not forbidden: ids are not leaked.
        if row is None or row.client_id != client.id:
            raise _not_found(session_id)
        return await self._with_relay(row)

    async def list_admin(self, state: str | None = None) -> AdminSessionList:
        return await admin_sessions(self.db, self.hub.session_counters, state)

    # --- renewing ---------------------------------------------------------------------------

    async def renew(self, client: AuthedClient, session_id: str) -> SessionInfo:
        row = await store.renew_own(self.db, session_id, client.id, utcnow() + self.ttl)
        if row is None:
            raise _not_found(session_id)
        if row.state != SessionState.OPEN:
            raise Conflict(
                "session_closed",
                f"session {session_id} is closed ({row.close_reason}); ask for a new route",
            )
        return await self._with_relay(row)

    def note_activity(self, session_id: str) -> None:
        """Relay traffic seen; the TTL is extended at the next flush (no I/O here)."""
        self._active.add(session_id)

    async def flush_activity(self) -> None:
        if not self._active:
            return
        ids, self._active = list(self._active), set()
        await store.extend(self.db, ids, utcnow() + self.ttl)

    def fresh_keys(self, stats: Sequence[PeerStat]) -> list[str]:
        return fresh_keys(stats, self.settings.handshake_fresh_s)

    def renew_keys(self, conn: Connection, node_id: str, keys: Sequence[str]) -> None:
        """Renews the node's open sessions of these keys in the caller's transaction (the
        heartbeat's, run by :meth:`Database.run`)."""
        store.renew_keys(conn, node_id, keys, utcnow() + self.ttl)

    async def renew_by_handshake(self, node_id: str, stats: Sequence[PeerStat]) -> None:
        """``peer_stats`` on the node's link: renew the sessions of fresh peers."""
        fresh = self.fresh_keys(stats)
        if not fresh:
            return
        await self.db.run(lambda conn: self.renew_keys(conn, node_id, fresh))

    # --- closing ----------------------------------------------------------------------------

    async def close(self, client: AuthedClient, session_id: str) -> SessionInfo:
        """Closes the caller's session (one UPDATE); a closed one is answered as it is."""
        claimed: list[str] = []

        def claim(row: SessionRow) -> None:
            claimed.extend(self.announcer.ledger.claim([row.id]))

        try:
            row, closed = await store.close_own(
                self.db, session_id, client.id, "client_closed", utcnow(), claim
            )
        except BaseException:
            self.announcer.ledger.unclaim(claimed)
            raise
        if row is None:
            raise _not_found(session_id)
        if closed:
            await self._closed([row], "client_closed")
        return self.info(row)

    async def close_where(self, reason: str, *conditions: ColumnElement[bool]) -> int:
        """Closes every open session matching ``conditions`` and announces it; returns how many."""
        claimed: list[str] = []

        def claim(rows: Sequence[SessionRow]) -> None:
            claimed.extend(self.announcer.ledger.claim(r.id for r in rows))

        try:
            rows = await store.close_open_sessions(
                self.db, reason, *conditions, before_commit=claim
            )
        except BaseException:
            self.announcer.ledger.unclaim(claimed)
            raise
        await self._closed(rows, reason)
        return len(rows)

    async def close_for_client(self, client_id: int, reason: str) -> int:
        return await self.close_where(reason, SessionRow.client_id == client_id)

    async def close_for_node(self, node_id: str, reason: str) -> int:
        # A device outlives its node's restart: the node gets it again in its next sync.
        return await self.close_where(
            reason, SessionRow.node_id == node_id, SessionRow.id.not_in(device_session_ids())
        )

    async def expire_due(self) -> int:
        """The periodic sweep: renewals noted from relay traffic are written first, closes
        made elsewhere are announced, then every session past its expiry is closed."""
        await self.flush_activity()
        await self.reconcile()
        return await self.close_where(
            "expired",
            SessionRow.expires_at <= utcnow(),
            SessionRow.id.not_in(device_session_ids()),  # a device lasts until revoked
        )

    async def reconcile(self) -> int:
        """Announces sessions closed behind this process's back (by ``bosonserver client
        revoke`` on the database, or by another instance)."""
        ledger = self.announcer.ledger
        closed = await store.closed_among(self.db, ledger.snapshot())
        announced = 0
        for row in closed:
            # Checked again here: a close path may have claimed it since the snapshot.
            if ledger.take(row.id):
                await self._closed([row], row.close_reason or "closed")
                announced += 1
        return announced


async def admin_sessions(
    db: Database, counters: Counters, state: str | None = None
) -> AdminSessionList:
    """Every session with its client's name (the admin API and ``bosonserver sessions``)."""
    return admin_session_list(await store.admin_rows(db, state), counters)


def _not_found(session_id: str) -> NotFound:
    return NotFound("session_not_found", f"session_id: no session {session_id}")
