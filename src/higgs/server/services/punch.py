"""Hole punching (issue 12; docs/protocol.md §2.7 and §3.5): the server tells both ends of a
relayed session where the other one's WireGuard socket is, and when to start.

The public ``ip:port`` of each WireGuard socket is what the UDP relay bound for the session's
legs (``relay_leases.client_seen``/``node_seen``): the relay saw those sources after the home
and client routers translated them. Behind an endpoint-independent (cone) NAT the same mapping
is used toward any destination, so the other end can reach it once the NAT's own filter has
seen an outgoing datagram to it. Behind a symmetric NAT the mapping toward the other end is a
different port, the probes never meet, and the session stays on the relay (no harm done: the
probes go outside WireGuard, whose endpoint is moved only after they met).

An offer is made when the client asks (``GET /v1/sessions/{id}/punch``): the node gets a
``punch`` control message and the client the same nonce and start time in the answer. An
answer repeats the current offer until it is ``retry_s`` old, then a new attempt is made (so a
client that keeps asking keeps trying to get back to a direct path, at that pace).

Sessions whose client never asks (an official WireGuard app, no software of ours) are steered
by the node instead: :meth:`PunchService.steer_due` sends ``punch`` with ``steer`` once the
relay bound both legs and the client stayed silent for ``steer_after_s``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from higgs.protocol.api import PunchAnswer, PunchOffer
from higgs.protocol.control import PeerStat, Punch
from higgs.server.relay.ports import RelayHub
from higgs.server.services.errors import NotFound
from higgs.server.services.nodeview import NodeView
from higgs.server.store.db import Database
from higgs.server.store.states import RouteMode, SessionState
from higgs.server.store.tables import RelayLease
from higgs.server.store.tables import Session as SessionRow

__all__ = ["PunchService", "PunchTimers"]

_COLUMNS = (
    SessionRow.id,
    SessionRow.client_id,
    SessionRow.node_id,
    SessionRow.client_public_key,
    SessionRow.mode,
    SessionRow.state,
    RelayLease.client_seen,
    RelayLease.node_seen,
    RelayLease.bound_at,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PunchTimers:
    lead_s: float = 1.0  # from the offer to the start: both ends hear of it by then
    window_s: float = 4.0  # probes are sent this long; no meeting → both stay on the relay
    retry_s: float = 30.0  # a failed attempt is tried again after this
    steer_after_s: float = 15.0  # a client silent this long after binding is not ours
    # An app shows it followed with its own next packet: its keepalive is 25 s when idle.
    steer_window_s: float = 30.0


@dataclass
class _Attempt:
    offer: PunchOffer
    node_endpoint: str
    made: float  # monotonic


class PunchService:
    def __init__(
        self,
        db: Database,
        hub: RelayHub,
        nodes: NodeView,
        timers: PunchTimers | None = None,
    ) -> None:
        self.db, self.hub, self.nodes = db, hub, nodes
        self.timers = timers or PunchTimers()
        self._attempts: dict[str, _Attempt] = {}
        self._asked: dict[str, float] = {}  # session → monotonic time its client last asked
        self._steered: dict[str, tuple[float, str]] = {}  # session → (when, client endpoint)
        self.offers = 0
        self.steers = 0

    async def _session(self, session_id: str) -> Any:
        async with self.db.begin() as conn:
            return (
                await conn.execute(
                    select(*_COLUMNS)
                    .outerjoin(RelayLease, RelayLease.session_id == SessionRow.id)
                    .where(SessionRow.id == session_id)
                )
            ).first()

    async def answer(self, client_id: int, session_id: str) -> PunchAnswer:
        row = await self._session(session_id)
        if row is None or row.client_id != client_id:
            raise NotFound("session_not_found", f"session_id: no session {session_id}")
        now = time.monotonic()
        self._asked[session_id] = now
        client_public, node_public = row.client_seen, row.node_seen

        def no(why: str) -> PunchAnswer:
            return PunchAnswer(
                client_public=client_public, node_public=node_public, offer=None, why=why
            )

        if row.state != SessionState.OPEN:
            return no("the session is closed")
        if row.mode == RouteMode.RELAY:
            return no("the session is relay-only (mode relay)")
        if not client_public or not node_public:
            return no("the UDP relay has not bound both legs yet: no public addresses observed")
        facts = self.nodes.get(row.node_id)
        if facts is not None and facts.endpoint:
            return no("the node has a verified endpoint: use the direct path")
        current = self._attempts.get(session_id)
        if (
            current is not None
            and now - current.made < self.timers.retry_s
            and current.node_endpoint == node_public
            and current.offer.peer_endpoint == node_public
        ):
            # The start as a delay from now: the client's clock need not agree with ours.
            again = current.offer.model_copy(
                update={"in_s": max(0.0, current.offer.at - time.time())}
            )
            return PunchAnswer(client_public=client_public, node_public=node_public, offer=again)
        nonce = secrets.token_hex(16)
        at = time.time() + self.timers.lead_s
        message = Punch(
            session_id=row.id,
            public_key=row.client_public_key,
            peer_endpoint=client_public,
            nonce=nonce,
            at=at,
            in_s=self.timers.lead_s,
            window_s=self.timers.window_s,
        )
        if not await self.hub.send_control(row.node_id, message.model_dump(mode="json")):
            return no("the node's control link is down")
        offer = PunchOffer(
            nonce=nonce,
            peer_endpoint=node_public,
            at=at,
            in_s=max(0.0, at - time.time()),
            window_s=self.timers.window_s,
        )
        self._attempts[session_id] = _Attempt(offer, node_public, now)
        self.offers += 1
        log.info(
            "hole punch offered",
            extra={"session_id": row.id, "client": client_public, "node": node_public},
        )
        return PunchAnswer(client_public=client_public, node_public=node_public, offer=offer)

    async def endpoints(self, node_id: str, peers: Sequence[PeerStat]) -> None:
        """The node's ``peer_stats``: a peer of a leased session whose endpoint is not the
        relay sits on a direct path (punched or steered); stored for ``bosonserver sessions``
        (only changes are written)."""
        reported = {p.public_key: p.endpoint for p in peers}
        query = (
            select(
                RelayLease.relay_address,
                RelayLease.port,
                RelayLease.punched_endpoint,
                SessionRow.client_public_key,
            )
            .join(SessionRow, SessionRow.id == RelayLease.session_id)
            .where(SessionRow.node_id == node_id, SessionRow.state == SessionState.OPEN)
        )
        async with self.db.begin() as conn:
            for row in (await conn.execute(query)).all():
                if row.client_public_key not in reported:
                    continue
                endpoint = reported[row.client_public_key]
                relay_host = row.relay_address
                direct = (
                    endpoint if endpoint and not endpoint.startswith(relay_host + ":") else None
                )
                if direct != row.punched_endpoint:
                    await conn.execute(
                        update(RelayLease)
                        .where(
                            RelayLease.relay_address == row.relay_address,
                            RelayLease.port == row.port,
                        )
                        .values(punched_endpoint=direct)
                    )

    async def steer_due(self) -> int:
        """Sends ``punch`` with ``steer`` for bound sessions whose client never asked."""
        now = time.monotonic()
        query = (
            select(*_COLUMNS, RelayLease.punched_endpoint)
            .join(RelayLease, RelayLease.session_id == SessionRow.id)
            .where(
                SessionRow.state == SessionState.OPEN,
                SessionRow.mode != RouteMode.RELAY,
                RelayLease.client_seen.is_not(None),
                RelayLease.node_seen.is_not(None),
            )
        )
        # An attempt runs for its window: not retried before it could have been judged.
        retry_s = max(self.timers.retry_s, self.timers.steer_window_s)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).all()
        live = {row.id for row in rows}
        for gone in set(self._steered) - live:
            del self._steered[gone]
        for gone in set(self._asked) - live:
            del self._asked[gone]
        for gone in set(self._attempts) - live:
            del self._attempts[gone]
        sent = 0
        for row in rows:
            if row.id in self._asked or row.bound_at is None or row.punched_endpoint:
                continue  # ours, not bound yet, or already on a direct path
            bound_age = _age_s(row.bound_at)
            if bound_age < self.timers.steer_after_s:
                continue
            facts = self.nodes.get(row.node_id)
            if facts is not None and facts.endpoint:
                continue
            last = self._steered.get(row.id)
            if last is not None and (last[1] == row.client_seen and now - last[0] < retry_s):
                continue
            assert row.client_seen is not None
            message = Punch(
                session_id=row.id,
                public_key=row.client_public_key,
                peer_endpoint=row.client_seen,
                nonce=secrets.token_hex(16),
                at=time.time(),
                in_s=0.0,
                window_s=self.timers.steer_window_s,
                steer=True,
            )
            if await self.hub.send_control(row.node_id, message.model_dump(mode="json")):
                self._steered[row.id] = (now, row.client_seen)
                self.steers += 1
                sent += 1
                log.info(
                    "steering a session's client toward the node",
                    extra={"session_id": row.id, "client": row.client_seen},
                )
        return sent


def _age_s(when: object) -> float:
    from datetime import UTC, datetime

    assert isinstance(when, datetime)
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return (datetime.now(UTC) - aware).total_seconds()
