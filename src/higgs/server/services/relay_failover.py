"""Moves the sessions of a relay host that stopped heartbeating to another (issue 14 item 4,
docs/scaleout.md "Relay hosts").

Every ``relay_failover_check_s`` the API reads the registry: a host silent past
``relay_host_dead_after_s`` (or one that said goodbye) is down. Each open session leased
there gets a port on the best live host for its node's RTTs (one transaction: the old lease
dropped, the new one inserted; a concurrent instance doing the same finds the old lease gone
and skips it). Its node is sent a full ``sync`` (the new relay endpoint of every peer), the
new host picks the lease up at its next read of the database (1 s), and the client sees the
new endpoint in ``GET /v1/sessions/{id}`` (``udp_relay``), which its daemon polls while on
the relay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from higgs.server.services.clock import utcnow
from higgs.server.services.sessions import SessionService
from higgs.server.store import relay_hosts

__all__ = ["FailoverRound", "RelayFailover"]

log = logging.getLogger(__name__)


@dataclass
class FailoverRound:
    dead: list[str] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)  # session id → new endpoint
    stranded: list[str] = field(default_factory=list)  # no other host had a free port


class RelayFailover:
    def __init__(self, sessions: SessionService) -> None:
        self.sessions = sessions
        self._told_dead: set[str] = set()

    async def run_once(self) -> FailoverRound:
        s = self.sessions
        now = utcnow()
        out = FailoverRound()
        async with s.db.begin() as conn:
            hosts = await conn.run_sync(relay_hosts.all_hosts)
            out.dead = [
                h.address for h in hosts if not h.live(now, s.settings.relay_host_dead_after_s)
            ]
            leases = await relay_hosts.open_leases_on(conn, out.dead)
        for address in set(out.dead) - self._told_dead:
            log.warning("relay host down", extra={"relay": address})
        self._told_dead = set(out.dead)
        if not leases:
            return out
        nodes: set[str] = set()
        for lease in leases:
            facts = s.nodes.get(lease.node_id)
            endpoint = await s.udp_leases.move(
                lease.session_id, lease.relay_address, now, facts.relay_rtt_ms if facts else None
            )
            if endpoint is None:
                out.stranded.append(lease.session_id)
                continue
            out.moved[lease.session_id] = endpoint
            nodes.add(lease.node_id)
            log.info(
                "session moved to another relay host",
                extra={"session_id": lease.session_id, "from": lease.relay_address, "to": endpoint},
            )
        for node_id in sorted(nodes):
            await s.sync_node(node_id)
        if out.stranded:
            log.warning("no live relay host has a free port", extra={"sessions": len(out.stranded)})
        return out
