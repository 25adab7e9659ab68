"""Opening a session: choosing its node, allocating its address, inserting its row.

The node is chosen from the in-memory view (no lock, no scan of the node table) and the
session opened in one transaction. Collision-freedom of tunnel addresses, relay channels and
keys comes from the database's unique indexes (plus this process's address reservations, so
that its own concurrent requests do not even collide): an attempt that loses a race (address,
channel or key taken by a concurrent one, or a stale view) chooses again, and each retry sees
the winner's commit.

Reconnecting with the same key: a client that asks for a route with a public key that already
has an open session *of its own* on the chosen node gets a new session and the old one is
closed with reason ``replaced`` (WireGuard peers are keyed by public key, so two open sessions
with one key on one node cannot coexist). The relay token is only stored hashed, so the old
session cannot be handed back. A key held by *another* client's open session on a node makes
that node ineligible (409 ``key_in_use`` when the node was named in the request).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from higgs.common.secrets import hash_token, new_token
from higgs.protocol.api import RouteRequest
from higgs.server.metrics import ServerMetrics
from higgs.server.services import routing
from higgs.server.services.clock import new_session_id, utcnow
from higgs.server.services.errors import Conflict, NotFound, Unavailable
from higgs.server.services.identity import AuthedClient
from higgs.server.services.ledger import AnnouncementLedger
from higgs.server.services.nodeview import NodeFacts, NodeView
from higgs.server.store import node_facts
from higgs.server.store import sessions as store
from higgs.server.store.db import Database
from higgs.server.store.states import SessionState
from higgs.server.store.tables import Session as SessionRow

__all__ = ["Opened", "SessionOpener"]

_MAX_CHANNEL = 0xFFFFFFFF
_ROUTE_TRIES = 8


@dataclass(frozen=True, slots=True)
class Opened:
    """A committed new session: its row, its node, its relay token (the only clear copy),
    and the caller's session it replaced (already closed in the database), if any."""

    row: SessionRow
    facts: NodeFacts
    token: str
    replaced: SessionRow | None


class _NodeFull(Exception):
    """The chosen node has no free slot or address in the database (the view was stale)."""

    def __init__(self, node_id: str, open_sessions: int) -> None:
        super().__init__(node_id)
        self.node_id, self.open_sessions = node_id, open_sessions


class SessionOpener:
    def __init__(
        self,
        db: Database,
        nodes: NodeView,
        is_connected: Callable[[str], bool],
        ledger: AnnouncementLedger,
        metrics: ServerMetrics,
        ttl: Callable[[], timedelta],
    ) -> None:
        self.db = db
        self.nodes = nodes
        self.is_connected = is_connected
        self.ledger = ledger
        self.metrics = metrics
        self.ttl = ttl
        # Tunnel addresses handed out by transactions of this process not yet committed.
        self._reserved: defaultdict[str, set[str]] = defaultdict(set)

    async def open(self, client: AuthedClient, req: RouteRequest) -> Opened:
        """Opens a session for the request, choosing again after a lost race."""
        wish = routing.RouteWish(req.node_id, req.country, req.min_bandwidth_mbps, req.mode)
        for _ in range(_ROUTE_TRIES):
            try:
                return await self._attempt(client, req, wish)
            except IntegrityError:
                self.metrics.route_retries.labels(reason="conflict").inc()
            except _NodeFull as full:
                # The view counted fewer sessions than the database holds: correct it.
                self.metrics.route_retries.labels(reason="stale_view").inc()
                self.nodes.set_open_sessions(full.node_id, full.open_sessions)
        raise Unavailable("no_route", "could not open a session (contention); try again")

    async def _attempt(
        self, client: AuthedClient, req: RouteRequest, wish: routing.RouteWish
    ) -> Opened:
        """One attempt: choose, close the caller's replaced session, allocate, insert: one
        transaction, run as synchronous Core in :meth:`Database.run` (the hot path)."""
        claimed: list[str] = []
        reserved: list[tuple[str, str]] = []

        def unit(conn: Connection) -> Opened:
            holders = store.key_holders(conn, req.client_public_key)
            facts, held = self._choose(conn, client, req, wish, holders)
            now = utcnow()
            replaced: SessionRow | None = None
            if held is not None and store.close_replaced(conn, held.id, now):
                replaced = held
                held.state, held.close_reason, held.closed_at = (
                    SessionState.CLOSED,
                    "replaced",
                    now,
                )
                claimed.extend(self.ledger.claim([held.id]))
            address = self._allocate_address(conn, facts)
            reserved.append((facts.node_id, address))
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
                state=SessionState.OPEN,
                close_reason=None,
                created_at=now,
                expires_at=now + self.ttl(),
                closed_at=None,
            )
            store.insert(conn, row)
            return Opened(row, facts, token, replaced)

        try:
            return await self.db.run(unit)
        except BaseException:
            self.ledger.unclaim(claimed)
            raise
        finally:
            for node_id, address in reserved:
                self._reserved[node_id].discard(address)

    def _allocate_address(self, conn: Connection, facts: NodeFacts) -> str:
        """The client's tunnel address on the node (``a.b.c.d/32``), reserved in this process
        until the caller's transaction ends; the unique index ``uq_sessions_open_address``
        guards against every other writer. Raises :class:`_NodeFull` when nothing is free."""
        used = store.open_addresses(conn, facts.node_id)
        reserved = self._reserved[facts.node_id]
        if len(used) + len(reserved) >= facts.max_clients:
            raise _NodeFull(facts.node_id, len(used))
        address = routing.allocate_address(facts.tunnel_subnet, [*used, *reserved])
        if address is None:
            raise _NodeFull(facts.node_id, len(used))
        text = f"{address}/32"
        reserved.add(text)
        return text

    def _choose(
        self,
        conn: Connection,
        client: AuthedClient,
        req: RouteRequest,
        wish: routing.RouteWish,
        holders: dict[str, SessionRow],
    ) -> tuple[NodeFacts, SessionRow | None]:
        named: NodeFacts | None = None
        pool: Iterable[NodeFacts]
        if req.node_id is not None:
            named = self.nodes.get(req.node_id)
            if named is None:
                record = node_facts.load_one(conn, req.node_id)
                named = None if record is None else NodeFacts.from_record(record)
            if named is None:
                raise NotFound("node_not_found", f"node_id: no node {req.node_id}")
            pool = [named]
        else:
            pool = self.nodes.values()
        connected = self.is_connected
        # Nothing yields from here on: the view cannot change while it is read.
        if not holders:
            # The common case streams the view through one pass: no list of N candidates,
            # and a node whose cached candidate cannot take any session is skipped without
            # asking the hub (connectivity does not change that verdict).
            if not routing.asks_anything(wish):  # no node named, no filter
                fit = self.nodes.best_taker(connected)  # by rank, without a pass over N
            else:
                fit = routing.best_of(_takers(pool, connected), wish)
            if fit is not None:
                chosen = named if named is not None else self.nodes.get(fit.node_id)
                if chosen is not None:
                    return chosen, None
            # Nothing fits: the full list, for the message saying why.
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


def _takers(
    pool: Iterable[NodeFacts], connected: Callable[[str], bool]
) -> Iterator[routing.Candidate]:
    """The pool's candidates, less those whose cached candidate already says the node can
    take no session at all."""
    for facts in pool:
        cached = facts.cached
        if cached is not None and not cached.can_take_any:
            continue
        yield facts.candidate(connected(facts.node_id))
