"""UDP relay ports for sessions (issue 11): leased when a session opens, put into the route
answer and into the node's ``peer_add``/``sync``; released by the session's close or expiry
(see :mod:`higgs.server.store.relay_leases`). The session service calls only this module.

With relay hosts registered (``relay_hosts``, issue 14) the lease goes to the live host that
:func:`~higgs.server.services.relay_choice.rank` puts first for the client's and the node's
measured RTTs; without any, to ``udp_relay_address`` as before. A lease names its host, so an
endpoint is always built from the lease, never from the settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from higgs.common.relay_ports import PortRange
from higgs.protocol.api import RelayTarget, UdpRelayPath
from higgs.server.config import ServerSettings
from higgs.server.services.relay_choice import Candidate, hubs_of, rank
from higgs.server.store import relay_hosts as hosts_store
from higgs.server.store import relay_leases as store
from higgs.server.store.db import Database
from higgs.server.store.tables import RelayLease
from higgs.server.store.tables import Session as SessionRow

__all__ = ["UdpLeases", "endpoint_of"]

log = logging.getLogger(__name__)

# Concurrent route requests pick the same next port; the loser of the insert picks again,
# seeing the winner's lease. Bounded: each attempt that loses means another session won.
LEASE_ATTEMPTS = 8


def _nothing() -> None:
    return None


def endpoint_of(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class _Host:
    address: str
    ports: PortRange
    probe_port: int
    leased: int = 0  # as the host last reported (ranking only: lease_port decides)
    ws_url: str | None = None  # its WebSocket hub, when it serves one


# The registry is re-read at most this often on the route path (one query per second, not
# one per route); failover reads it fresh.
HOSTS_CACHE_S = 1.0


class UdpLeases:
    def __init__(self, db: Database, settings: ServerSettings) -> None:
        self.db, self.settings = db, settings
        self.address = settings.udp_relay_address
        self.ports = PortRange.parse(settings.udp_relay_ports)
        self._cache: tuple[float, list[_Host]] | None = None
        # Told of every new lease (a route, a device's roaming, a failover move): the relay
        # embedded in this process reads its sessions at once instead of at its next second,
        # which a client's first handshake would otherwise often beat.
        self.on_leased: Callable[[], None] = _nothing

    def endpoint(self, port: int) -> str:
        assert self.address is not None
        return endpoint_of(self.address, port)

    # --- the relay hosts ----------------------------------------------------------------

    def live_hosts(self, conn: Connection, now: datetime, *, fresh: bool = False) -> list[_Host]:
        """Synchronous, as every step of a lease (run in :meth:`Database.run`)."""
        mono = time.monotonic()
        if not fresh and self._cache is not None and mono - self._cache[0] < HOSTS_CACHE_S:
            return self._cache[1]
        dead_after = self.settings.relay_host_dead_after_s
        out = []
        for h in hosts_store.all_hosts(conn):
            if not h.live(now, dead_after):
                continue
            leased = h.stats.get("ports_leased")
            try:
                ports = PortRange.parse(h.ports)
            except ValueError:
                log.warning("relay host %s registered a bad port range %r", h.address, h.ports)
                continue
            leased_n = leased if isinstance(leased, int) else 0
            out.append(_Host(h.address, ports, h.probe_port, leased_n, h.ws_url))
        self._cache = (mono, out)
        return out

    async def targets(self, now: datetime) -> list[RelayTarget]:
        """The live hosts nodes and clients are to time (those with a probe port)."""
        cached = self._cache
        if cached is not None and time.monotonic() - cached[0] < HOSTS_CACHE_S:
            hosts = cached[1]
        else:
            hosts = await self.db.run(lambda conn: self.live_hosts(conn, now))
        return [
            RelayTarget(address=h.address, probe_port=h.probe_port) for h in hosts if h.probe_port
        ]

    def _ranked(
        self,
        conn: Connection,
        now: datetime,
        client_rtt: Mapping[str, float] | None,
        node_rtt: Mapping[str, float] | None,
        exclude: str | None = None,
    ) -> list[_Host]:
        live = self.live_hosts(conn, now, fresh=exclude is not None)
        hosts = {h.address: h for h in live if h.address != exclude}
        if not hosts:
            if self.address is None or self.address == exclude:
                return []
            return [_Host(self.address, self.ports, 0)]  # no registry: the configured relay
        candidates = [Candidate(a, len(h.ports) - h.leased) for a, h in hosts.items()]
        return [hosts[c.address] for c in rank(candidates, client_rtt, node_rtt)]

    # --- leasing ------------------------------------------------------------------------

    async def lease(
        self,
        row: SessionRow,
        now: Any,
        client_rtt: Mapping[str, float] | None = None,
        node_rtt: Mapping[str, float] | None = None,
    ) -> UdpRelayPath | None:
        """Leases a port to the just-opened session (its own transaction: a full relay
        leaves the session with its other paths)."""
        if row.mode == "direct":
            return None

        def unit(conn: Connection) -> tuple[str, int] | None:
            # Its lease already (another API instance's round leased it first, e.g. a
            # device's roaming): the same one, not a second.
            return store.lease_of(conn, row.id) or self._lease_in(
                conn, row.id, now, client_rtt, node_rtt
            )

        for _ in range(LEASE_ATTEMPTS):
            try:
                got = await self.db.run(unit)
                break
            except IntegrityError:
                # The session row is committed already: raising here would answer 409 for a
                # session that stays open without its relay port.
                continue
        else:
            got = None
        if got is None:
            if self.address is not None:
                log.warning("no free UDP relay port", extra={"session_id": row.id})
            return None
        self.on_leased()
        return UdpRelayPath(endpoint=endpoint_of(*got))

    def _lease_in(
        self,
        conn: Connection,
        session_id: str,
        now: datetime,
        client_rtt: Mapping[str, float] | None,
        node_rtt: Mapping[str, float] | None,
        exclude: str | None = None,
    ) -> tuple[str, int] | None:
        for host in self._ranked(conn, now, client_rtt, node_rtt, exclude):
            port = store.lease_port(
                conn, host.address, host.ports, self.settings.udp_relay_cooldown_s, session_id, now
            )
            if port is not None:
                return host.address, port
        return None

    async def move(
        self,
        session_id: str,
        dead: str,
        now: datetime,
        node_rtt: Mapping[str, float] | None,
    ) -> str | None:
        """Moves the session off the dead host ``dead``: its new endpoint, or None when no
        other host has a port (or another instance moved it first)."""
        for _ in range(LEASE_ATTEMPTS):
            try:
                async with self.db.begin() as conn:
                    legs = await hosts_store.drop_lease(conn, session_id, dead)
                    if legs is None:
                        return None
                    got = await conn.run_sync(
                        lambda c: self._lease_in(c, session_id, now, None, node_rtt, dead)
                    )
                    if got is None:
                        raise _NoPort
                    await hosts_store.hint_legs(conn, session_id, legs)
                self.on_leased()
                return endpoint_of(*got)
            except IntegrityError:
                continue
            except _NoPort:  # rolled back: the session keeps its lease on the dead host
                return None
        return None

    async def endpoints(self, session_ids: Sequence[str]) -> dict[str, str]:
        if not session_ids:
            return {}
        query = select(RelayLease.session_id, RelayLease.relay_address, RelayLease.port).where(
            RelayLease.session_id.in_(list(session_ids))
        )
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).all()
        return {r.session_id: endpoint_of(r.relay_address, r.port) for r in rows}

    async def hubs(self, session_ids: Sequence[str], now: datetime) -> dict[str, str]:
        """Session id → the WebSocket hub of its lease's host (only hosts that serve one and
        are live); empty without such hosts, at no query beyond the cached registry."""
        if not session_ids:
            return {}
        cached = self._cache
        fresh = cached is not None and time.monotonic() - cached[0] < HOSTS_CACHE_S
        if fresh and cached is not None and not any(h.ws_url for h in cached[1]):
            return {}  # the route path without host hubs: not one query more than before
        async with self.db.begin() as conn:
            live = await conn.run_sync(lambda c: self.live_hosts(c, now))
            ws_urls = {h.address: h.ws_url for h in live if h.ws_url}
            if not ws_urls:
                return {}
            query = select(RelayLease.session_id, RelayLease.relay_address).where(
                RelayLease.session_id.in_(list(session_ids))
            )
            leased_on = {r.session_id: r.relay_address for r in (await conn.execute(query)).all()}
        return hubs_of(leased_on, ws_urls)

    @staticmethod
    def for_node(endpoint: str | None, node_endpoint: str | None) -> str | None:
        """The relay endpoint the node is told for a peer: only when it has no direct one."""
        return endpoint if node_endpoint is None else None


class _NoPort(Exception):
    pass
