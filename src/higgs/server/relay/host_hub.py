"""The WebSocket relay hub of a relay host (``bosonserver relay --relay-ws-listen``).

The same :class:`~higgs.server.relay.hub.RelayHubServer` as an API instance's, on its own
event loop in a thread of the relay process, told what to admit by the shared database
instead of by the services: every ``read_every_s`` (0.9 s, the scale-out credential cache
bound) it admits exactly the open relayed sessions leased on this host and the nodes of those
sessions that are not stopped, by the same token hashes the instance hubs check. A session
closed, moved to another host, or a node stopped is refused within that bound (an open link is
closed: 4002 for the client, 4001 for the node). Nothing here writes to the database; the
hub's counters go into the host's heartbeat stats (:meth:`RelayHostHub.stats`).

A node link on this hub carries data only: the node's control link stays on the API
instances (docs/scaleout.md "Relay hosts").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import select

from higgs.common.retrylog import RetryLog
from higgs.server.relay.hub import NoHubEvents, RelayHubServer
from higgs.server.store.db import Database
from higgs.server.store.states import NodeState, RouteMode, SessionState
from higgs.server.store.tables import Node, RelayLease
from higgs.server.store.tables import Session as SessionRow

__all__ = ["READ_EVERY_S", "Admissions", "RelayHostHub", "read_admissions"]

log = logging.getLogger(__name__)

# No longer than an API instance caches a credential (CLUSTER_CACHE_TTL_S): a revocation
# holds on a relay host's hub within the same bound.
READ_EVERY_S = 0.9


@dataclass(frozen=True)
class Admissions:
    nodes: dict[str, str]  # node id → token hash
    sessions: dict[str, tuple[int, str, str]]  # session id → (channel, node id, token hash)


async def read_admissions(db: Database, relay_address: str) -> Admissions:
    """The open relayed sessions leased on ``relay_address`` and their nodes not stopped."""
    query = (
        select(
            SessionRow.id,
            SessionRow.channel,
            SessionRow.node_id,
            SessionRow.relay_token_hash,
            Node.token_hash,
        )
        .join(RelayLease, RelayLease.session_id == SessionRow.id)
        .join(Node, Node.id == SessionRow.node_id)
        .where(
            RelayLease.relay_address == relay_address,
            SessionRow.state == SessionState.OPEN,
            SessionRow.mode != RouteMode.DIRECT,
            Node.state != NodeState.STOPPED,
        )
    )
    async with db.begin() as conn:
        rows = (await conn.execute(query)).all()
    return Admissions(
        nodes={r[2]: r[4] for r in rows},
        sessions={r[0]: (int(r[1]), r[2], r[3]) for r in rows},
    )


def apply(hub: RelayHubServer, wanted: Admissions) -> None:
    """Makes the hub admit exactly ``wanted``."""
    for session_id in set(hub.admitted_sessions()) - set(wanted.sessions):
        hub.close_session(session_id, "closed")
    for node_id in set(hub.allowed_nodes()) - set(wanted.nodes):
        hub.forget_node(node_id, "no session on this relay host")
    for node_id, token_hash in wanted.nodes.items():
        hub.allow_node(node_id, token_hash)
    admitted = set(hub.admitted_sessions())
    for session_id, (channel, node_id, token_hash) in wanted.sessions.items():
        if session_id in admitted:
            continue
        try:
            hub.open_session(session_id, channel, node_id, token_hash)
        except ValueError:
            log.warning("session not admitted here", extra={"session_id": session_id})


class RelayHostHub:
    def __init__(
        self,
        db_url: str,
        relay_address: str,
        listen: tuple[str, int],
        *,
        ssl_context: ssl.SSLContext | None = None,
        ping_interval_s: float = 15.0,
        dead_after_s: float = 45.0,
        read_every_s: float = READ_EVERY_S,
    ) -> None:
        self.db_url, self.relay_address, self.listen = db_url, relay_address, listen
        self.ssl_context = ssl_context
        self.read_every_s = read_every_s
        self.registry = CollectorRegistry()
        self.hub = RelayHubServer(
            NoHubEvents(), self.registry, ping_interval_s=ping_interval_s, dead_after_s=dead_after_s
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._read_log = RetryLog(log, "relay host hub: reading admissions")

    def start(self, timeout_s: float = 30.0) -> None:
        """Listens (raises when it cannot), then admits from the database in the background."""
        self._thread = threading.Thread(target=self._run, name="ws-relay-hub", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError("the WebSocket relay hub did not start in time")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def stats(self) -> dict[str, Any]:
        """The hub's traffic since start, for the host's heartbeat (read from another
        thread: plain integer reads, at worst a pass behind)."""
        up_d, up_b, down_d, down_b = self.hub.tables.totals()
        return {
            "ws_to_node_datagrams": up_d,
            "ws_to_node_bytes": up_b,
            "ws_to_client_datagrams": down_d,
            "ws_to_client_bytes": down_b,
            "ws_node_links": self.hub.counters.node_links,
            "ws_session_links": self.hub.counters.session_links,
        }

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start() when it happens before listening
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            else:
                log.exception("relay host hub stopped")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        db = Database(self.db_url)
        try:
            await self._read(db)  # admitted before the first link can arrive
            await self.hub.start(*self.listen, self.ssl_context)
            self._started.set()
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.read_every_s)
                if self._stop.is_set():
                    break
                await self._read(db)
        finally:
            await self.hub.stop()
            await db.dispose()

    async def _read(self, db: Database) -> None:
        try:
            wanted = await read_admissions(db, self.relay_address)
        except Exception as exc:  # the database away: the links already up go on
            self._read_log.failed(exc)
            return
        self._read_log.ok()
        apply(self.hub, wanted)

    @property
    def port(self) -> int:
        return self.hub.port
