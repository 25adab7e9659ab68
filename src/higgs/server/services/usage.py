"""Usage per client account per month, from the nodes' per-peer counters, and the quota.

Nodes report every WireGuard peer's cumulative ``rx_bytes``/``tx_bytes`` (heartbeats and the
control link's ``peer_stats``, docs/protocol.md). A peer belongs to one open session on its
node (peers are keyed by public key), so the bytes a session moved since the previous report
are the difference of two reports; a counter that went down means the peer was re-created and
counts from zero. A session this process first sees after its own start may have moved bytes
already counted by the previous process: its first report is only the baseline.

The quota is bytes both ways per UTC calendar month. A route request of a client that used it
up is refused (403 ``quota_exceeded``); a report that takes a client to its quota closes its
open sessions with reason ``quota_exceeded``.

A client found within its quota is not asked about again for :data:`QUOTA_OK_S` (every route
request asked the database before). What that can let through: on another instance than the
one that saw the quota run out or lowered, a route in that second; the next usage report of
its session (which the client's traffic makes) finds the quota used up and closes it. An
exhausted quota is never remembered: raising it takes effect at once everywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime

from higgs.protocol.api import PeerStat
from higgs.server.services.clock import utcnow
from higgs.server.services.errors import Forbidden, NotFound
from higgs.server.services.sessions import SessionService
from higgs.server.store import usage as sql
from higgs.server.store.db import Database

__all__ = ["QUOTA_REASON", "UsageService", "month_of"]

log = logging.getLogger(__name__)

QUOTA_REASON = "quota_exceeded"
_MB = 1_000_000
# How long a "within its quota" answer is believed: the bound on revocations elsewhere (1 s).
QUOTA_OK_S = 1.0


def month_of(when: datetime) -> str:
    return when.strftime("%Y-%m")


class UsageService:
    def __init__(self, db: Database, sessions: SessionService) -> None:
        self.db = db
        self.sessions = sessions
        self.metrics = sessions.metrics
        self._started = time.time()
        # session id -> the last (rx, tx) reported for its peer
        self._last: dict[str, tuple[int, int]] = {}
        # session id -> bytes counted for it by this process (rx, tx): the dashboard's figures
        self.session_bytes: dict[str, tuple[int, int]] = {}
        # all bytes counted since start (rx, tx): the traffic series samples this
        self.total_rx = 0
        self.total_tx = 0
        # client id -> monotonic time until which it is known to be within its quota
        self._within: dict[int, float] = {}

    async def record(self, node_id: str, stats: Sequence[PeerStat]) -> int:
        """Adds what each of the node's sessions moved since the last report; closes the
        sessions of clients that reached their quota. Returns the bytes added."""
        if not stats:
            return 0
        month = month_of(utcnow())
        deltas: dict[int, tuple[int, int]] = {}
        async with self.db.begin() as conn:
            peers = await sql.open_peers(conn, node_id)
            for stat in stats:
                peer = peers.get(stat.public_key)
                if peer is None:
                    continue
                before = self._last.get(peer.session_id)
                self._last[peer.session_id] = (stat.rx_bytes, stat.tx_bytes)
                if before is None:
                    if peer.created_at_ts < self._started:
                        continue  # opened before this process: baseline only
                    before = (0, 0)
                rx = stat.rx_bytes - before[0] if stat.rx_bytes >= before[0] else stat.rx_bytes
                tx = stat.tx_bytes - before[1] if stat.tx_bytes >= before[1] else stat.tx_bytes
                if rx == 0 and tx == 0:
                    continue
                old = self.session_bytes.get(peer.session_id, (0, 0))
                self.session_bytes[peer.session_id] = (old[0] + rx, old[1] + tx)
                c_rx, c_tx = deltas.get(peer.client_id, (0, 0))
                deltas[peer.client_id] = (c_rx + rx, c_tx + tx)
            if not deltas:
                return 0
            await sql.add_usage(conn, month, deltas)
            states = await sql.quota_states(conn, month, deltas)
        added = sum(rx + tx for rx, tx in deltas.values())
        self.total_rx += sum(rx for rx, _ in deltas.values())
        self.total_tx += sum(tx for _, tx in deltas.values())
        self.metrics.usage_bytes.labels(direction="from_clients").inc(
            sum(rx for rx, _ in deltas.values())
        )
        self.metrics.usage_bytes.labels(direction="to_clients").inc(
            sum(tx for _, tx in deltas.values())
        )
        for state in states:
            if state.exhausted:
                self._within.pop(state.client_id, None)
                closed = await self.sessions.close_for_client(state.client_id, QUOTA_REASON)
                if closed:
                    self.metrics.quota_closes.inc()
                    log.info(
                        "client reached its monthly quota: sessions closed",
                        extra={"client": state.name, "sessions": closed},
                    )
        self._forget_closed(set(p.session_id for p in peers.values()))
        return added

    def _forget_closed(self, open_ids: set[str]) -> None:
        """Bounded memory: counters of sessions that are no longer open on any node go once
        the table grows past what one node could hold."""
        if len(self._last) > 50_000:
            self._last = {k: v for k, v in self._last.items() if k in open_ids}
            self.session_bytes = {k: v for k, v in self.session_bytes.items() if k in open_ids}

    async def check_quota(self, client_id: int) -> None:
        """Raises 403 ``quota_exceeded`` when the client used up this month's quota."""
        now = time.monotonic()
        if self._within.get(client_id, 0.0) > now:
            return
        month = month_of(utcnow())
        state = await self.db.run(lambda conn: sql.quota_of(conn, month, client_id))
        if state is None or not state.exhausted:
            if len(self._within) > 100_000:  # bounded: the expired ones go
                self._within = {k: t for k, t in self._within.items() if t > now}
            self._within[client_id] = now + QUOTA_OK_S
            return
        raise Forbidden(
            QUOTA_REASON,
            f"client {state.name!r} used its monthly quota of "
            f"{(state.quota_bytes or 0) / _MB:.1f} MB ({state.used_bytes / _MB:.1f} MB "
            f"in {month} UTC); ask the operator to raise it, or wait for next month",
        )

    async def set_quota(self, name: str, quota_bytes: int | None) -> None:
        async with self.db.begin() as conn:
            client_id = await sql.set_quota(conn, name, quota_bytes)
            if client_id is None:
                raise NotFound("client_not_found", f"no client named {name!r}")
            states = await sql.quota_states(conn, month_of(utcnow()), [client_id])
        self._within.pop(client_id, None)
        if any(s.exhausted for s in states):
            await self.sessions.close_for_client(client_id, QUOTA_REASON)

    async def by_client(self) -> tuple[str, dict[str, tuple[int, int, int | None]]]:
        """This month and client name -> (rx, tx, quota)."""
        month = month_of(utcnow())
        async with self.db.begin() as conn:
            return month, await sql.usage_by_client(conn, month)
