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

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

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
        self._route_lock = asyncio.Lock()
        self._active: set[str] = set()
        # Sessions this process told the hub about and has not yet announced as closed.
        self._announced_open: set[str] = set()

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.session_ttl_s)

    # --- opening --------------------------------------------------------------------------

    async def create_route(self, client: AuthedClient, req: RouteRequest) -> RouteResponse:
        wish = routing.RouteWish(req.node_id, req.country, req.min_bandwidth_mbps, req.mode)
        replaced: SessionRow | None = None
        # One route at a time in this process: address and channel allocation read-then-write.
        # The partial unique indexes catch anything that slips past (several instances).
        async with self._route_lock, self.db.transaction() as s:
            node, replaced = await self._choose(s, client, req, wish)
            now = utcnow()
            if replaced is not None:
                replaced.state, replaced.close_reason, replaced.closed_at = (
                    "closed",
                    "replaced",
                    now,
                )
                self._claim([replaced])
                await s.flush()
            used = (
                await s.scalars(
                    select(SessionRow.tunnel_address).where(
                        SessionRow.node_id == node.id, SessionRow.state == "open"
                    )
                )
            ).all()
            address = routing.allocate_address(node.tunnel_subnet, used)
            if address is None:  # _choose checked capacity; only a race gets here
                raise Unavailable("no_route", f"node {node.id} has no free tunnel address")
            token = new_token("hgr_")
            row = SessionRow(
                id=new_session_id(),
                client_id=client.id,
                node_id=node.id,
                client_public_key=req.client_public_key,
                tunnel_address=f"{address}/32",
                channel=await self._new_channel(s),
                relay_token_hash=hash_token(token),
                mode=req.mode,
                state="open",
                close_reason=None,
                created_at=now,
                expires_at=now + self.ttl,
                closed_at=None,
            )
            s.add(row)
        if replaced is not None:
            await self._announce_closed([replaced], "replaced")
        self.hub.open_session(row.id, row.channel, row.node_id, row.relay_token_hash)
        self._announced_open.add(row.id)
        self.metrics.sessions_opened.inc()
        log.info(
            "session opened",
            extra={"session_id": row.id, "node_id": node.id, "client": client.name},
        )
        await self._send(node.id, PeerAdd(**peer_object(row)).model_dump(mode="json"))
        node_ip = routing.node_address(node.tunnel_subnet).ip
        dns, address_v6 = [str(node_ip)], None
        if _forwards_ipv6(node):
            assert node.tunnel_subnet_v6 is not None
            v6 = client_address_v6(node.tunnel_subnet, node.tunnel_subnet_v6, row.tunnel_address)
            if v6 is not None:
                address_v6 = f"{v6}/128"
                dns.append(str(node_address_v6(node.tunnel_subnet_v6).ip))
        return RouteResponse(
            session_id=row.id,
            expires_at=row.expires_at,
            ttl_s=self.settings.session_ttl_s,
            node=RouteNode(node_id=node.id, country=node.country, region=node.region),
            wireguard=WireGuardConfig(
                address=row.tunnel_address,
                address_v6=address_v6,
                node_public_key=node.public_key,
                dns=dns,
                mtu=node.tunnel_mtu,
                allowed_ips=list(ALLOWED_IPS),
                persistent_keepalive=KEEPALIVE_S,
            ),
            direct=(
                DirectPath(endpoint=node.endpoint)
                if node.endpoint and req.mode != "relay"
                else None
            ),
            relay=(
                RelayPath(
                    url=f"{self.relay_base}/v1/relay/session", token=token, channel=row.channel
                )
                if req.mode != "direct"
                else None
            ),
        )

    async def _choose(
        self, s: AsyncSession, client: AuthedClient, req: RouteRequest, wish: routing.RouteWish
    ) -> tuple[Node, SessionRow | None]:
        query = select(Node).where(Node.state != "stopped")
        if req.node_id is not None:
            query = select(Node).where(Node.id == req.node_id)
        nodes = {n.id: n for n in (await s.scalars(query)).all()}
        counts = dict(
            (
                await s.execute(
                    select(SessionRow.node_id, func.count())
                    .where(SessionRow.state == "open", SessionRow.node_id.in_(list(nodes)))
                    .group_by(SessionRow.node_id)
                )
            ).all()
        )
        holders = {
            r.node_id: r
            for r in (
                await s.scalars(
                    select(SessionRow).where(
                        SessionRow.state == "open",
                        SessionRow.client_public_key == req.client_public_key,
                    )
                )
            ).all()
        }
        candidates = []
        for node in nodes.values():
            holder = holders.get(node.id)
            if holder is not None and holder.client_id != client.id:
                if req.node_id is not None:
                    raise Conflict(
                        "key_in_use",
                        "client_public_key is already used by another session on this node",
                    )
                continue
            # The caller's own session with this key will be replaced: do not count it.
            open_n = int(counts.get(node.id, 0)) - (1 if holder is not None else 0)
            metrics = node.metrics or {}
            candidates.append(
                routing.Candidate(
                    node_id=node.id,
                    state=node.state,
                    open_sessions=open_n,
                    max_clients=node.max_clients,
                    country=node.country,
                    bandwidth_mbps=node.bandwidth_mbps,
                    has_endpoint=node.endpoint is not None,
                    connected=self.hub.is_node_connected(node.id),
                    free_addresses=routing.host_capacity(node.tunnel_subnet) - open_n,
                    budget_left_mb=_num(metrics.get("budget_left_mb")),
                    budget_total_mb=_num(metrics.get("budget_total_mb")),
                    latency_ms=_num(metrics.get("latency_ms")),
                )
            )
        best, why = routing.pick(candidates, wish)
        if best is None:
            if req.node_id is not None and req.node_id not in nodes:
                raise NotFound("node_not_found", f"node_id: no node {req.node_id}")
            raise Unavailable("no_route", why)
        chosen = nodes[best.node_id]
        held = holders.get(chosen.id)
        return chosen, held

    async def _new_channel(self, s: AsyncSession) -> int:
        for _ in range(16):
            channel = secrets.randbelow(_MAX_CHANNEL) + 1
            taken = await s.scalar(select(SessionRow.id).where(SessionRow.channel == channel))
            if taken is None:
                return channel
        raise Unavailable("no_channel", "could not allocate a relay channel; try again")

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

    async def renew_by_handshake(self, node_id: str, stats: Sequence[PeerStat]) -> None:
        """Peers that handshook recently are in use (possibly on the direct path): renew."""
        fresh = [
            p.public_key
            for p in stats
            if p.last_handshake_s is not None
            and p.last_handshake_s <= self.settings.handshake_fresh_s
        ]
        if not fresh:
            return
        async with self.db.transaction() as s:
            await s.execute(
                update(SessionRow)
                .where(
                    SessionRow.node_id == node_id,
                    SessionRow.state == "open",
                    SessionRow.client_public_key.in_(fresh),
                )
                .values(expires_at=utcnow() + self.ttl)
            )

    # --- closing --------------------------------------------------------------------------

    async def close(self, client: AuthedClient, session_id: str) -> SessionInfo:
        try:
            async with self.db.transaction() as s:
                row = await self._own(s, client, session_id)
                was_open = row.state == "open"
                if was_open:
                    row.state, row.close_reason, row.closed_at = "closed", "client_closed", utcnow()
                    self._claim([row])
        except BaseException:
            self._unclaim([session_id])
            raise
        if was_open:
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
        sync = Sync(peers=[Peer(**peer_object(r)) for r in rows])
        await self._send(node_id, sync.model_dump(mode="json"))

    async def reload(self) -> int:
        """After a restart: every open session is admitted to the hub again."""
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


def _forwards_ipv6(node: Node) -> bool:
    """The node registered an IPv6 prefix and its last heartbeat did not say it lost IPv6."""
    return bool(node.tunnel_subnet_v6) and (node.metrics or {}).get("ipv6") is not False


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
