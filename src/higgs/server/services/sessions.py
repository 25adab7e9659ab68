"""Sessions: opening a route, renewing, closing, expiring, and telling node and hub about it.

The database is the truth. Every change commits first and is announced afterwards: to the node
over its control link (``peer_add``/``peer_remove``, docs/protocol.md §3.3) and to the relay hub
(``open_session``/``close_session``). A node whose link is down misses the announcement and
gets the full set in ``sync`` when it reconnects, so nothing depends on delivery.

Reconnecting with the same key: a client that asks for a route with a public key that already
has an open session *of its own* on the chosen node gets a new session and the old one is
closed with reason ``replaced`` (WireGuard peers are keyed by public key, so two open sessions
with one key on one node cannot coexist). The relay token is only stored hashed, so the old
session cannot be handed back. A key held by *another* client's open session on a node makes
that node ineligible (409 ``key_in_use`` when the node was named in the request).
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Update, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from higgs.common.secrets import hash_token, new_token
from higgs.protocol.api import (
    AdminSession,
    AdminSessionList,
    DirectPath,
    PeerStat,
    RelayPath,
    RouteNode,
    RouteRequest,
    RouteResponse,
    SessionInfo,
    WireGuardConfig,
    client_address_v6,
    node_address_v6,
)
from higgs.protocol.control import Peer, PeerAdd, PeerRemove, Sync
from higgs.server.config import ServerSettings
from higgs.server.metrics import ServerMetrics
from higgs.server.relay.ports import RelayHub
from higgs.server.services import routing
from higgs.server.services.clock import new_session_id, utcnow
from higgs.server.services.errors import Conflict, NotFound, Unavailable
from higgs.server.services.identity import AuthedClient
from higgs.server.services.nodeview import NodeFacts, NodeView
from higgs.server.services.relay_leases import UdpLeases
from higgs.server.store import queries
from higgs.server.store.db import Database
from higgs.server.store.tables import Client, Node
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "ALLOWED_IPS",
    "KEEPALIVE_S",
    "SessionService",
    "admin_sessions",
    "close_in_db",
    "peer_object",
    "session_info",
]

log = logging.getLogger(__name__)

ALLOWED_IPS = ["0.0.0.0/0", "::/0"]
KEEPALIVE_S = 25
_MAX_CHANNEL = 0xFFFFFFFF
# A route request that loses a race (address, channel or key taken by a concurrent one, or a
# stale view) chooses again; each retry sees the winner's commit.
_ROUTE_TRIES = 8


def peer_object(row: SessionRow) -> dict[str, Any]:
    """The peer fields of ``peer_add`` and of each entry of ``sync`` (protocol §3.3)."""
    return {
        "session_id": row.id,
        "channel": row.channel,
        "public_key": row.client_public_key,
        "address": row.tunnel_address,
        "relayed": row.mode != "direct",
    }


class SessionService:
    def __init__(
        self, db: Database, hub: RelayHub, settings: ServerSettings, metrics: ServerMetrics
    ) -> None:
        self.db = db
        self.hub = hub
        self.settings = settings
        self.metrics = metrics
        self.relay_base = ""  # set by the server once the relay listener is bound
        self.nodes = NodeView()
        self.udp_leases = UdpLeases(db, settings)  # UDP relay ports (issue 11)
        # Tunnel addresses handed out by transactions of this process not yet committed.
        self._reserved: defaultdict[str, set[str]] = defaultdict(set)
        self._active: set[str] = set()
        # Sessions this process told the hub about and has not yet announced as closed.
        self._announced_open: set[str] = set()

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.session_ttl_s)

    # --- opening --------------------------------------------------------------------------

    async def create_route(self, client: AuthedClient, req: RouteRequest) -> RouteResponse:
        """Chooses a node from the in-memory view (no lock, no scan of the node table) and
        opens the session in one transaction. Collision-freedom of tunnel addresses, relay
        channels and keys comes from the database's unique indexes (plus this process's
        address reservations, so that its own concurrent requests do not even collide): a
        request that loses a race chooses again."""
        wish = routing.RouteWish(req.node_id, req.country, req.min_bandwidth_mbps, req.mode)
        for _ in range(_ROUTE_TRIES):
            try:
                opened = await self._open_session(client, req, wish)
            except IntegrityError:
                self.metrics.route_retries.labels(reason="conflict").inc()
                continue
            except _NodeFull as full:
                # The view counted fewer sessions than the database holds: correct it.
                self.metrics.route_retries.labels(reason="stale_view").inc()
                self.nodes.set_open_sessions(full.node_id, full.open_sessions)
                continue
            break
        else:
            raise Unavailable("no_route", "could not open a session (contention); try again")
        row, facts, token, replaced = opened
        udp_relay = await self.udp_leases.lease(row, row.created_at)  # UDP relay (issue 11)
        if replaced is not None:
            await self._announce_closed([replaced], "replaced")
        self.nodes.session_opened(facts.node_id)
        self.hub.open_session(row.id, row.channel, row.node_id, row.relay_token_hash)
        self._announced_open.add(row.id)
        self.metrics.sessions_opened.inc()
        log.info(
            "session opened",
            extra={"session_id": row.id, "node_id": facts.node_id, "client": client.name},
        )
        peer = peer_object(row)
        UdpLeases.for_node(peer, udp_relay.endpoint if udp_relay else None, facts.endpoint)
        await self._send(facts.node_id, PeerAdd(**peer).model_dump(mode="json"))
        node_ip = routing.node_address(facts.tunnel_subnet).ip
        dns, address_v6 = [str(node_ip)], None
        if facts.forwards_ipv6:
            assert facts.tunnel_subnet_v6 is not None
            v6 = client_address_v6(facts.tunnel_subnet, facts.tunnel_subnet_v6, row.tunnel_address)
            if v6 is not None:
                address_v6 = f"{v6}/128"
                dns.append(str(node_address_v6(facts.tunnel_subnet_v6).ip))
        return RouteResponse(
            session_id=row.id,
            expires_at=row.expires_at,
            ttl_s=self.settings.session_ttl_s,
            node=RouteNode(node_id=facts.node_id, country=facts.country, region=facts.region),
            wireguard=WireGuardConfig(
                address=row.tunnel_address,
                address_v6=address_v6,
                node_public_key=facts.public_key,
                dns=dns,
                mtu=facts.tunnel_mtu,
                allowed_ips=list(ALLOWED_IPS),
                persistent_keepalive=KEEPALIVE_S,
            ),
            direct=(
                DirectPath(endpoint=facts.endpoint)
                if facts.endpoint and req.mode != "relay"
                else None
            ),
            relay=(
                RelayPath(
                    url=f"{self.relay_base}/v1/relay/session", token=token, channel=row.channel
                )
                if req.mode != "direct"
                else None
            ),
            udp_relay=udp_relay,
        )

    async def _open_session(
        self, client: AuthedClient, req: RouteRequest, wish: routing.RouteWish
    ) -> tuple[SessionRow, NodeFacts, str, SessionRow | None]:
        """One attempt: choose, close the caller's replaced session, allocate, insert."""
        claimed: list[str] = []
        reserved: tuple[str, str] | None = None
        try:
            async with self.db.begin() as conn:
                holders = await _key_holders(conn, req.client_public_key)
                facts, held = await self._choose(conn, client, req, wish, holders)
                now = utcnow()
                replaced: SessionRow | None = None
                if held is not None:
                    closed = await conn.execute(
                        update(SessionRow)
                        .where(SessionRow.id == held.id, SessionRow.state == "open")
                        .values(state="closed", close_reason="replaced", closed_at=now)
                    )
                    if closed.rowcount:
                        replaced = held
                        held.state, held.close_reason, held.closed_at = "closed", "replaced", now
                        claimed = self._claim([held])
                address = await self._allocate_address(conn, facts)
                reserved = (facts.node_id, address)
                token = new_token("hgr_")
                row = SessionRow(
                    id=new_session_id(),
                    client_id=client.id,
                    node_id=facts.node_id,
                    client_public_key=req.client_public_key,
                    tunnel_address=address,
                    channel=secrets.randbelow(_MAX_CHANNEL) + 1,
                    relay_token_hash=hash_token(token),
                    mode=req.mode,
                    state="open",
                    close_reason=None,
                    created_at=now,
                    expires_at=now + self.ttl,
                    closed_at=None,
                )
                await conn.execute(queries.INSERT_SESSION, _columns(row))
        except BaseException:
            self._unclaim(claimed)
            raise
        finally:
            if reserved is not None:
                self._reserved[reserved[0]].discard(reserved[1])
        return row, facts, token, replaced

    async def _allocate_address(self, conn: AsyncConnection, facts: NodeFacts) -> str:
        """The client's tunnel address on the node (``a.b.c.d/32``), reserved in this process
        until the caller's transaction ends; the unique index ``uq_sessions_open_address``
        guards against every other writer. Raises :class:`_NodeFull` when nothing is free."""
        used = list((await conn.scalars(queries.OPEN_ADDRESSES, {"node_id": facts.node_id})).all())
        reserved = self._reserved[facts.node_id]
        if len(used) + len(reserved) >= facts.max_clients:
            raise _NodeFull(facts.node_id, len(used))
        address = routing.allocate_address(facts.tunnel_subnet, [*used, *reserved])
        if address is None:
            raise _NodeFull(facts.node_id, len(used))
        text = f"{address}/32"
        reserved.add(text)
        return text

    async def _choose(
        self,
        conn: AsyncConnection,
        client: AuthedClient,
        req: RouteRequest,
        wish: routing.RouteWish,
        holders: dict[str, SessionRow],
    ) -> tuple[NodeFacts, SessionRow | None]:
        named: NodeFacts | None = None
        pool: Iterable[NodeFacts]
        if req.node_id is not None:
            named = self.nodes.get(req.node_id) or await _load_one(conn, req.node_id)
            if named is None:
                raise NotFound("node_not_found", f"node_id: no node {req.node_id}")
            pool = [named]
        else:
            pool = self.nodes.values()
        connected = self.hub.is_node_connected
        # No await from here on: the view cannot change while it is read.
        if not holders:
            candidates = [f.candidate(connected(f.node_id)) for f in pool]
        else:
            candidates = []
            for facts in pool:
                holder = holders.get(facts.node_id)
                if holder is not None and holder.client_id != client.id:
                    if req.node_id is not None:
                        raise Conflict(
                            "key_in_use",
                            "client_public_key is already used by another session on this node",
                        )
                    continue
                # The caller's own session with this key will be replaced: it does not count.
                candidates.append(facts.candidate(connected(facts.node_id), holder is not None))
        best, why = routing.pick(candidates, wish)
        chosen = named if named is not None else self.nodes.get(best.node_id) if best else None
        if best is None or chosen is None:
            raise Unavailable("no_route", why or "no online node fits the request")
        return chosen, holders.get(best.node_id)

    async def refresh_view(self) -> int:
        """Reloads the node view from the database (start, and every sweep: a safety net
        for changes this process did not see). Returns the number of nodes in it."""
        self.nodes.begin_reload()
        try:
            loaded = await _load_facts(self.db)
        except BaseException:
            self.nodes.abort_reload()
            raise
        self.nodes.replace_all(loaded)
        return len(self.nodes)

    # --- reading --------------------------------------------------------------------------

    async def _own(self, s: AsyncSession, client: AuthedClient, session_id: str) -> SessionRow:
        row = await s.get(SessionRow, session_id)
        # Another client's session is reported as missing, not forbidden: ids are not leaked.
        if row is None or row.client_id != client.id:
            raise NotFound("session_not_found", f"session_id: no session {session_id}")
        return row

    def info(self, row: SessionRow) -> SessionInfo:
        return session_info(row, self.hub.session_counters)

    async def get(self, client: AuthedClient, session_id: str) -> SessionInfo:
        async with self.db.transaction() as s:
            row = await self._own(s, client, session_id)
        return self.info(row)

    async def list_admin(self, state: str | None = None) -> AdminSessionList:
        return await admin_sessions(self.db, self.hub.session_counters, state)

    # --- renewing -------------------------------------------------------------------------

    async def renew(self, client: AuthedClient, session_id: str) -> SessionInfo:
        async with self.db.transaction() as s:
            row = await self._own(s, client, session_id)
            if row.state != "open":
                raise Conflict(
                    "session_closed",
                    f"session {session_id} is closed ({row.close_reason}); ask for a new route",
                )
            row.expires_at = utcnow() + self.ttl
        return self.info(row)

    def note_activity(self, session_id: str) -> None:
        """Relay traffic seen; the TTL is extended at the next flush (no I/O here)."""
        self._active.add(session_id)

    async def flush_activity(self) -> None:
        if not self._active:
            return
        ids, self._active = list(self._active), set()
        async with self.db.transaction() as s:
            await s.execute(
                update(SessionRow)
                .where(SessionRow.id.in_(ids), SessionRow.state == "open")
                .values(expires_at=utcnow() + self.ttl)
            )

    def fresh_keys(self, stats: Sequence[PeerStat]) -> list[str]:
        """Peers that handshook recently are in use (possibly on the direct path)."""
        return [
            p.public_key
            for p in stats
            if p.last_handshake_s is not None
            and p.last_handshake_s <= self.settings.handshake_fresh_s
        ]

    def renew_keys_statement(self, node_id: str, keys: Sequence[str]) -> Update:
        """The UPDATE renewing the node's open sessions of these keys (run by the caller, e.g.
        inside the heartbeat's transaction)."""
        return (
            update(SessionRow)
            .where(
                SessionRow.node_id == node_id,
                SessionRow.state == "open",
                SessionRow.client_public_key.in_(keys),
            )
            .values(expires_at=utcnow() + self.ttl)
        )

    async def renew_by_handshake(self, node_id: str, stats: Sequence[PeerStat]) -> None:
        """``peer_stats`` on the node's link: renew the sessions of fresh peers."""
        fresh = self.fresh_keys(stats)
        if not fresh:
            return
        async with self.db.begin() as conn:
            await conn.execute(self.renew_keys_statement(node_id, fresh))

    # --- closing --------------------------------------------------------------------------

    async def close(self, client: AuthedClient, session_id: str) -> SessionInfo:
        """Closes the caller's session (one UPDATE); a closed one is answered as it is."""
        claimed: list[str] = []
        params = {
            "session_id": session_id,
            "owner_id": client.id,
            "reason": "client_closed",
            "now": utcnow(),
        }
        try:
            async with self.db.begin() as conn:
                closed = (await conn.execute(queries.CLOSE_OWN_SESSION, params)).first()
                if closed is not None:
                    row = _row(closed)
                    claimed = self._claim([row])
                else:
                    found = (
                        await conn.execute(queries.SESSION_BY_ID, {"session_id": session_id})
                    ).first()
                    # Another client's session is reported as missing: ids are not leaked.
                    if found is None or found.client_id != client.id:
                        raise NotFound("session_not_found", f"session_id: no session {session_id}")
                    row = _row(found)
        except BaseException:
            self._unclaim(claimed)
            raise
        if closed is not None:
            await self._announce_closed([row], "client_closed")
        return self.info(row)

    async def close_where(self, reason: str, *conditions: ColumnElement[bool]) -> int:
        """Closes every open session matching ``conditions`` and announces it; returns how many."""
        claimed: list[str] = []

        def claim(rows: Sequence[SessionRow]) -> None:
            claimed.extend(self._claim(rows))

        try:
            rows = await close_in_db(self.db, reason, *conditions, before_commit=claim)
        except BaseException:
            self._unclaim(claimed)
            raise
        await self._announce_closed(rows, reason)
        return len(rows)

    def _claim(self, rows: Sequence[SessionRow]) -> list[str]:
        """Called inside the closing transaction, before it commits: from now on only the
        closing code path announces these sessions, so a concurrent :meth:`reconcile` that
        sees them closed in the database does not announce them a second time."""
        ids = [r.id for r in rows if r.id in self._announced_open]
        self._announced_open.difference_update(ids)
        return ids

    def _unclaim(self, ids: Sequence[str]) -> None:
        """The closing transaction failed: the sessions are still open; keep tracking them."""
        self._announced_open.update(ids)

    async def reconcile(self) -> int:
        """Announces sessions closed behind this process's back (by ``bosonserver client
        revoke`` on the database, or by another instance): peer_remove and hub.close_session."""
        known = list(self._announced_open)
        closed: list[SessionRow] = []
        for start in range(0, len(known), 500):
            async with self.db.transaction() as s:
                closed += (
                    await s.scalars(
                        select(SessionRow).where(
                            SessionRow.id.in_(known[start : start + 500]),
                            SessionRow.state == "closed",
                        )
                    )
                ).all()
        announced = 0
        for row in closed:
            # Checked again here: a close path may have claimed it since the snapshot.
            if row.id in self._announced_open:
                self._announced_open.discard(row.id)
                await self._announce_closed([row], row.close_reason or "closed")
                announced += 1
        return announced

    async def close_for_client(self, client_id: int, reason: str) -> int:
        return await self.close_where(reason, SessionRow.client_id == client_id)

    async def close_for_node(self, node_id: str, reason: str) -> int:
        return await self.close_where(reason, SessionRow.node_id == node_id)

    async def expire_due(self) -> int:
        await self.flush_activity()
        await self.reconcile()
        return await self.close_where("expired", SessionRow.expires_at <= utcnow())

    async def _announce_closed(self, rows: Sequence[SessionRow], reason: str) -> None:
        for row in rows:
            self._announced_open.discard(row.id)
            self.nodes.session_closed(row.node_id)
            self.metrics.sessions_closed.labels(reason=reason).inc()
            log.info(
                "session closed",
                extra={"session_id": row.id, "node_id": row.node_id, "reason": reason},
            )
            try:
                self.hub.close_session(row.id, reason)
            except Exception:
                log.exception("hub.close_session failed", extra={"session_id": row.id})
            remove = PeerRemove(
                session_id=row.id,
                channel=row.channel,
                public_key=row.client_public_key,
                reason=reason,
            )
            await self._send(row.node_id, remove.model_dump(mode="json"))

    # --- node link ------------------------------------------------------------------------

    async def open_rows(self, node_id: str | None = None) -> list[SessionRow]:
        query = select(SessionRow).where(SessionRow.state == "open")
        if node_id is not None:
            query = query.where(SessionRow.node_id == node_id)
        async with self.db.transaction() as s:
            return list((await s.scalars(query.order_by(SessionRow.created_at))).all())

    async def sync_node(self, node_id: str) -> None:
        rows = await self.open_rows(node_id)
        # --- UDP relay endpoints for the node's peers (issue 11) ---
        udp = await self.udp_leases.endpoints([r.id for r in rows])
        facts = self.nodes.get(node_id)
        peers = [peer_object(r) for r in rows]
        for peer in peers:
            UdpLeases.for_node(peer, udp.get(peer["session_id"]), facts.endpoint if facts else None)
        # ---
        sync = Sync(peers=[Peer(**p) for p in peers])
        await self._send(node_id, sync.model_dump(mode="json"))

    async def reload(self) -> int:
        """After a restart: every open session is admitted to the hub again."""
        await self.refresh_view()
        rows = await self.open_rows()
        for row in rows:
            self.hub.open_session(row.id, row.channel, row.node_id, row.relay_token_hash)
            self._announced_open.add(row.id)
        return len(rows)

    async def _send(self, node_id: str, message: dict[str, Any]) -> None:
        try:
            delivered = await self.hub.send_control(node_id, message)
        except Exception:
            log.exception("sending control message failed", extra={"node_id": node_id})
            return
        if not delivered:
            log.debug(
                "node link down; the node gets this in sync",
                extra={"node_id": node_id, "type": message["type"]},
            )


async def close_in_db(
    db: Database,
    reason: str,
    *conditions: ColumnElement[bool],
    before_commit: Callable[[Sequence[SessionRow]], None] | None = None,
) -> list[SessionRow]:
    """Marks matching open sessions closed in the database only (the CLI uses this directly;
    a running server announces them at its next sweep, see :meth:`SessionService.reconcile`)."""
    async with db.transaction() as s:
        rows = list(
            (
                await s.scalars(
                    select(SessionRow)
                    .where(SessionRow.state == "open", *conditions)
                    .with_for_update()
                )
            ).all()
        )
        now = utcnow()
        for row in rows:
            row.state, row.close_reason, row.closed_at = "closed", reason, now
        if before_commit is not None:
            before_commit(rows)
    return rows


class _NodeFull(Exception):
    """The chosen node has no free slot or address in the database (the view was stale)."""

    def __init__(self, node_id: str, open_sessions: int) -> None:
        super().__init__(node_id)
        self.node_id, self.open_sessions = node_id, open_sessions


def _columns(row: SessionRow) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in SessionRow.__table__.columns}


def _row(mapping: Any) -> SessionRow:
    """A detached SessionRow from a Core result row (for announcing and answering)."""
    return SessionRow(**dict(mapping._mapping))


async def _key_holders(conn: AsyncConnection, public_key: str) -> dict[str, SessionRow]:
    """Open sessions holding ``public_key``, by node (at most one per node)."""
    rows = (await conn.execute(queries.KEY_HOLDERS, {"public_key": public_key})).all()
    return {r.node_id: _row(r) for r in rows}


_FACT_COLUMNS = (
    Node.id,
    Node.state,
    Node.public_key,
    Node.endpoint,
    Node.tunnel_subnet,
    Node.tunnel_subnet_v6,
    Node.tunnel_mtu,
    Node.max_clients,
    Node.bandwidth_mbps,
    Node.country,
    Node.region,
    Node.metrics,
)


def _facts(row: Any, open_sessions: int) -> NodeFacts:
    facts = NodeFacts(
        node_id=row.id,
        state=row.state,
        public_key=row.public_key,
        endpoint=row.endpoint,
        tunnel_subnet=row.tunnel_subnet,
        tunnel_subnet_v6=row.tunnel_subnet_v6,
        tunnel_mtu=row.tunnel_mtu,
        max_clients=row.max_clients,
        bandwidth_mbps=row.bandwidth_mbps,
        country=row.country,
        region=row.region,
        open_sessions=open_sessions,
    )
    facts.apply_metrics(row.metrics)
    return facts


async def _load_one(conn: AsyncConnection, node_id: str) -> NodeFacts | None:
    """A node the view does not hold (stopped, or not seen by this process yet)."""
    row = (await conn.execute(select(*_FACT_COLUMNS).where(Node.id == node_id))).first()
    if row is None:
        return None
    open_n = await conn.scalar(
        select(func.count())
        .select_from(SessionRow)
        .where(SessionRow.node_id == node_id, SessionRow.state == "open")
    )
    return _facts(row, int(open_n or 0))


async def _load_facts(db: Database) -> list[NodeFacts]:
    """Every node that is not stopped, with its open-session count."""
    async with db.begin() as conn:
        counts = dict(
            (
                await conn.execute(
                    select(SessionRow.node_id, func.count())
                    .where(SessionRow.state == "open")
                    .group_by(SessionRow.node_id)
                )
            ).all()
        )
        rows = (await conn.execute(select(*_FACT_COLUMNS).where(Node.state != "stopped"))).all()
    return [_facts(r, int(counts.get(r.id, 0))) for r in rows]


def session_info(row: SessionRow, counters: Callable[[str], tuple[int, int]]) -> SessionInfo:
    datagrams, nbytes = counters(row.id)
    return SessionInfo(
        session_id=row.id,
        state=row.state,
        node_id=row.node_id,
        client_public_key=row.client_public_key,
        address=row.tunnel_address,
        channel=row.channel,
        mode=row.mode,
        created_at=row.created_at,
        expires_at=row.expires_at,
        closed_at=row.closed_at,
        close_reason=row.close_reason,
        relay_datagrams=datagrams,
        relay_bytes=nbytes,
    )


async def admin_sessions(
    db: Database, counters: Callable[[str], tuple[int, int]], state: str | None = None
) -> AdminSessionList:
    """Every session with its client's name (the admin API and ``bosonserver sessions``)."""
    query = select(SessionRow, Client.name).join(Client, Client.id == SessionRow.client_id)
    if state is not None:
        query = query.where(SessionRow.state == state)
    async with db.transaction() as s:
        rows = (await s.execute(query.order_by(SessionRow.created_at))).all()
    return AdminSessionList(
        sessions=[
            AdminSession(**session_info(row, counters).model_dump(), client=name)
            for row, name in rows
        ]
    )
