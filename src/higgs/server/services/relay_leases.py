"""UDP relay ports for sessions (issue 11): leased when a session opens, put into the route
answer and into the node's ``peer_add``/``sync``; released by the session's close or expiry
(see :mod:`higgs.server.store.relay_leases`). The session service calls only this module."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from higgs.common.relay_ports import PortRange
from higgs.protocol.api import UdpRelayPath
from higgs.server.config import ServerSettings
from higgs.server.store import relay_leases as store
from higgs.server.store.db import Database
from higgs.server.store.tables import RelayLease
from higgs.server.store.tables import Session as SessionRow

__all__ = ["UdpLeases"]

log = logging.getLogger(__name__)

# Concurrent route requests pick the same next port; the loser of the insert picks again,
# seeing the winner's lease. Bounded: each attempt that loses means another session won.
LEASE_ATTEMPTS = 8


class UdpLeases:
    def __init__(self, db: Database, settings: ServerSettings) -> None:
        self.db, self.settings = db, settings
        self.address = settings.udp_relay_address
        self.ports = PortRange.parse(settings.udp_relay_ports)

    def endpoint(self, port: int) -> str:
        host = f"[{self.address}]" if self.address and ":" in self.address else self.address
        return f"{host}:{port}"

    async def lease(self, row: SessionRow, now: Any) -> UdpRelayPath | None:
        """Leases a port to the just-opened session (its own transaction: a full relay
        leaves the session with its other paths)."""
        if self.address is None or row.mode == "direct":
            return None
        port: int | None = None
        for _ in range(LEASE_ATTEMPTS):
            try:
                async with self.db.begin() as conn:
                    port = await store.lease_port(
                        conn,
                        self.address,
                        self.ports,
                        self.settings.udp_relay_cooldown_s,
                        row.id,
                        now,
                    )
                break
            except IntegrityError:
                # The session row is committed already: raising here would answer 409 for a
                # session that stays open without its relay port.
                continue
        if port is None:
            log.warning("no free UDP relay port", extra={"session_id": row.id})
            return None
        return UdpRelayPath(endpoint=self.endpoint(port))

    async def endpoints(self, session_ids: Sequence[str]) -> dict[str, str]:
        if self.address is None or not session_ids:
            return {}
        query = select(RelayLease.session_id, RelayLease.port).where(
            RelayLease.session_id.in_(list(session_ids))
        )
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).all()
        return {r.session_id: self.endpoint(r.port) for r in rows}

    @staticmethod
    def for_node(endpoint: str | None, node_endpoint: str | None) -> str | None:
        """The relay endpoint the node is told for a peer: only when it has no direct one."""
        return endpoint if node_endpoint is None else None
