"""What the server does when the relay hub reports something (implements RelayEvents)."""

from __future__ import annotations

import logging
from typing import Any

from higgs.common.keys import validate_public_key
from higgs.common.ratelog import RateLimitedLog
from higgs.protocol import control
from higgs.protocol.api import PeerStat
from higgs.server.metrics import ServerMetrics
from higgs.server.services.punch import PunchService
from higgs.server.services.registry import RegistryService
from higgs.server.services.sessions import SessionService
from higgs.server.services.usage import UsageService
from higgs.server.store.devices import set_app_endpoints

__all__ = ["ServerEvents"]

log = logging.getLogger(__name__)


def _is_key(text: str) -> bool:
    try:
        validate_public_key(text)
    except ValueError:
        return False
    return True


class ServerEvents:
    """Bound to the services after the hub exists (the hub is built with this object)."""

    def __init__(self, metrics: ServerMetrics | None = None) -> None:
        self._metrics = metrics
        # One malformed message per millisecond from a node must not fill the log: counted
        # always (higgs_node_messages_dropped_total), logged a few times per node and window.
        self._quiet = RateLimitedLog(log)
        self._registry: RegistryService | None = None
        self._sessions: SessionService | None = None
        self._usage: UsageService | None = None
        self.punch: PunchService | None = None

    def bind(
        self, registry: RegistryService, sessions: SessionService, usage: UsageService | None = None
    ) -> None:
        self._registry, self._sessions, self._usage = registry, sessions, usage

    async def node_link_up(self, node_id: str) -> None:
        log.info("node link up", extra={"node_id": node_id})
        if self._sessions is not None:
            self._sessions.nodes.link_changed(node_id)  # connected nodes rank higher
            await self._sessions.sync_node(node_id)

    async def node_link_down(self, node_id: str) -> None:
        log.info("node link down", extra={"node_id": node_id})
        if self._sessions is not None:
            self._sessions.nodes.link_changed(node_id)

    async def node_message(self, node_id: str, message: dict[str, Any]) -> None:
        try:
            parsed = control.parse_obj(message)
        except control.ControlError as exc:
            self._dropped("malformed")
            self._quiet.log(
                f"malformed control messages from node {node_id}",
                logging.WARNING,
                "malformed control message dropped",
                extra={"node_id": node_id, "problem": str(exc)[:300]},
            )
            return
        if isinstance(parsed, control.PeerStats):
            if self._sessions is not None:
                stats = [
                    PeerStat(**p.model_dump(exclude={"endpoint"}))
                    for p in parsed.peers
                    if _is_key(p.public_key)
                ]
                await self._sessions.renew_by_handshake(node_id, stats)
                if self._usage is not None:  # issue 15: usage and quotas
                    await self._usage.record(node_id, stats)
            if self.punch is not None:  # issue 12: which sessions run on a punched path
                await self.punch.endpoints(node_id, parsed.peers)
            if self._sessions is not None:  # issue 18: where each direct device's app is
                reported = {p.public_key: p.endpoint for p in parsed.peers if p.endpoint}
                await set_app_endpoints(self._sessions.db, node_id, reported)
            return
        self._dropped("unexpected")
        self._quiet.log(
            f"unexpected control messages from node {node_id}",
            logging.INFO,
            "control message ignored",
            extra={"node_id": node_id, "type": parsed.type},
        )

    def _dropped(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.node_messages_dropped.labels(reason=reason).inc()

    def session_activity(self, session_id: str) -> None:
        if self._sessions is not None:
            self._sessions.note_activity(session_id)
