"""One instance's part of a scale-out deployment: its beat, its presence claims and the
reconciliation that repairs whatever the bus lost (docs/scaleout.md).

Every ``cluster_reconcile_s`` the instance makes its local state equal to the database's:

1. its presence claims equal the links it holds (:func:`presence.assert_links`);
2. commands this instance could not hand over are flagged ``resync`` (if the database could
   not take the flag when they failed), and nodes flagged ``resync`` here get a full ``sync``;
3. the presence map (who holds which link) is reloaded;
4. the local hub admits exactly the allowed nodes and the open sessions;
5. the routing view is reloaded (heartbeats and registrations other instances handled);
6. the rate limiter's share is the number of live instances.

Nothing here depends on a bus message arriving; the bus only makes changes visible sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from sqlalchemy import delete, select

from higgs.common.retrylog import every
from higgs.server.api.ratelimit import RateLimiter
from higgs.server.cluster.bus import Bus
from higgs.server.cluster.hub import ClusterHub
from higgs.server.config import ServerSettings
from higgs.server.services.clock import utcnow
from higgs.server.services.identity import IdentityService
from higgs.server.services.nodeview import NodeView, refresh_view
from higgs.server.services.sessions import SessionService
from higgs.server.store import presence
from higgs.server.store import sessions as session_store
from higgs.server.store.db import Database
from higgs.server.store.states import NodeState
from higgs.server.store.tables import ApiInstance, Node, NodePresence

__all__ = ["CLUSTER_CACHE_TTL_S", "Cluster", "default_instance_id"]

log = logging.getLogger(__name__)

# A credential revoked on one instance is refused by all within 1 s even when the bus lost
# the invalidation: no instance caches a lookup longer than this.
CLUSTER_CACHE_TTL_S = 0.9


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"[:64]


class Cluster:
    def __init__(self, settings: ServerSettings, db: Database, bus: Bus, hub: ClusterHub) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.hub = hub
        self.instance_id = hub.instance_id
        self.reconciled = 0  # completed reconciliations (tests and /metrics read it)
        self._tasks: list[asyncio.Task[None]] = []
        self._sessions: SessionService | None = None
        self._nodes: NodeView | None = None
        self._limiter: RateLimiter | None = None
        # Resync flags asked for while one write is in flight go together in the next one.
        self._resyncs: dict[str, list[asyncio.Future[None]]] = {}
        self._resync_writer: asyncio.Task[None] | None = None

    # -- presence writes (ClusterEvents calls these) -----------------------------------------

    async def claim(self, node_id: str) -> None:
        await presence.claim(self.db, node_id, self.instance_id, utcnow())

    async def release(self, node_id: str) -> None:
        await presence.release(self.db, node_id, self.instance_id)

    async def want_resync(self, node_id: str) -> None:
        """Flags the node for a ``sync`` by its holder. Why batched: every command for a node
        this instance cannot hand over (no link anywhere yet, or a holder not heard of)
        asked for its own transaction, a tenth of an instance's CPU when routes went to such
        nodes (the control bench's nodes have no link: bench.profile of a cluster). Flags
        asked for while a write is in flight share the next write (one UPDATE ... IN);
        each caller still returns only once its flag is written, or gets the write's error."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resyncs.setdefault(node_id, []).append(done)
        if self._resync_writer is None or self._resync_writer.done():
            self._resync_writer = asyncio.create_task(self._write_resyncs(), name="resyncs")
        await done

    async def _write_resyncs(self) -> None:
        while self._resyncs:
            batch, self._resyncs = self._resyncs, {}
            try:
                await presence.want_resyncs(self.db, sorted(batch))
            except Exception as exc:  # each caller keeps its node in ``lost``
                outcome: BaseException | None = exc
            else:
                outcome = None
            for waiters in batch.values():
                for done in waiters:
                    if done.done():
                        continue
                    if outcome is None:
                        done.set_result(None)
                    else:
                        done.set_exception(outcome)

    # -- life --------------------------------------------------------------------------------

    async def start(
        self,
        identity: IdentityService,
        sessions: SessionService,
        nodes: NodeView,
        limiter: RateLimiter,
    ) -> None:
        self._sessions, self._nodes, self._limiter = sessions, nodes, limiter
        self.hub.on_lost = self.want_resync
        self.hub.on_invalidate = identity.drop_cached
        identity.on_revoked = self.hub.invalidate
        await self.hub.attach()
        await self._beat()
        self._tasks.append(
            asyncio.create_task(
                every(self.settings.cluster_beat_s, self._beat, "cluster beat", log),
                name="cluster-beat",
            )
        )
        self._tasks.append(
            asyncio.create_task(
                every(
                    self.settings.cluster_reconcile_s, self.reconcile, "cluster reconciliation", log
                ),
                name="cluster-reconcile",
            )
        )
        log.info("cluster instance up", extra={"instance": self.instance_id})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        # A clean stop hands its nodes over at once: the others stop routing commands here.
        try:
            async with self.db.begin() as conn:
                await conn.execute(
                    delete(NodePresence).where(NodePresence.instance_id == self.instance_id)
                )
                await conn.execute(delete(ApiInstance).where(ApiInstance.id == self.instance_id))
        except Exception:
            log.warning("could not withdraw this instance's presence", exc_info=True)
        await self.bus.close()

    async def _beat(self) -> None:
        await presence.beat(self.db, self.instance_id, self.hub.relay_base, utcnow())

    async def reconcile(self) -> None:
        assert self._sessions is not None
        assert self._nodes is not None
        local = self.hub.local
        now = utcnow()
        await presence.assert_links(self.db, self.instance_id, local.connected_nodes(), now)
        for node_id in list(self.hub.lost):
            await presence.want_resync(self.db, node_id)
            self.hub.lost.discard(node_id)
        for node_id in await presence.take_resyncs(self.db, self.instance_id):
            if local.is_node_connected(node_id):
                await self._sessions.sync_node(node_id)
        since = time.monotonic()
        holders = await presence.holders(self.db, now, self.settings.instance_dead_after_s)
        self.hub.set_holders(holders, since)
        await self._admit_from_store()
        await refresh_view(self._nodes, self.db)
        if self._limiter is not None:
            live = await presence.live_instances(self.db, now, self.settings.instance_dead_after_s)
            self._limiter.share = max(1, live)
        self.reconciled += 1

    async def _admit_from_store(self) -> None:
        """The local hub admits what the database allows, whatever the bus delivered; except
        what changed here while the database was being read (the read may predate it)."""
        hub = self.hub
        local = hub.local
        since = time.monotonic()
        async with self.db.begin() as conn:
            allowed = {
                r[0]: r[1]
                for r in (
                    await conn.execute(
                        select(Node.id, Node.token_hash).where(Node.state != NodeState.STOPPED)
                    )
                ).all()
            }
        for node_id in set(local.allowed_nodes()) - set(allowed):
            if not hub.changed_since("node", node_id, since):
                local.forget_node(node_id, "stopped")
        for node_id, token_hash in allowed.items():
            if not hub.changed_since("node", node_id, since):
                local.allow_node(node_id, token_hash)
        since = time.monotonic()
        rows = await session_store.open_rows(self.db)
        open_ids = {r.id for r in rows}
        for session_id in set(local.admitted_sessions()) - open_ids:
            if not hub.changed_since("session", session_id, since):
                local.close_session(session_id, "closed")
        admitted = set(local.admitted_sessions())
        for row in rows:
            if row.id not in admitted and not hub.changed_since("session", row.id, since):
                try:
                    local.open_session(row.id, row.channel, row.node_id, row.relay_token_hash)
                except ValueError:
                    log.warning("session not admitted here", extra={"session_id": row.id})
