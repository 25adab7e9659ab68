"""What the server does when the relay hub reports something (implements RelayEvents)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import TypeAdapter, ValidationError

from higgs.protocol.api import PeerStat
from higgs.server.services.registry import RegistryService
from higgs.server.services.sessions import SessionService

__all__ = ["ServerEvents"]

log = logging.getLogger(__name__)

_PEER_STATS = TypeAdapter(list[PeerStat])


class ServerEvents:
    """Bound to the services after the hub exists (the hub is built with this object)."""

    def __init__(self) -> None:
        self._registry: RegistryService | None = None
        self._sessions: SessionService | None = None

    def bind(self, registry: RegistryService, sessions: SessionService) -> None:
        self._registry, self._sessions = registry, sessions

    async def node_link_up(self, node_id: str) -> None:
        log.info("node link up", extra={"node_id": node_id})
        if self._sessions is not None:
            await self._sessions.sync_node(node_id)

    async def node_link_down(self, node_id: str) -> None:
        log.info("node link down", extra={"node_id": node_id})

    async def node_message(self, node_id: str, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "peer_stats" and self._sessions is not None:
            try:
                stats = _PEER_STATS.validate_python(message.get("peers", []))
            except ValidationError as exc:
                log.warning(
                    "malformed peer_stats dropped",
                    extra={"node_id": node_id, "problem": str(exc.errors()[0]["msg"])},
                )
                return
            await self._sessions.renew_by_handshake(node_id, stats)
            return
        log.info("unknown control message ignored", extra={"node_id": node_id, "type": str(kind)})

    def session_activity(self, session_id: str) -> None:
        if self._sessions is not None:
            self._sessions.note_activity(session_id)
