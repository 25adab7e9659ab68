"""Announcing committed session changes to the relay hub and to the nodes.

The database is the truth; every change commits first and is announced afterwards: to the
relay hub (``open_session``/``close_session``, so it admits or drops the client's relay link)
and to the node over its control link (``peer_add``/``peer_remove``, docs/protocol.md §3.3).
A node whose link is down misses the message and gets the full set in ``sync`` when it
reconnects, so nothing depends on delivery. The :class:`~higgs.server.services.ledger.
AnnouncementLedger` makes each close announced exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TypeVar

from higgs.protocol.control import ControlMessage, Peer, PeerAdd, PeerRemove, Sync
from higgs.server.relay.ports import RelayHub
from higgs.server.services.ledger import AnnouncementLedger
from higgs.server.store.states import RouteMode
from higgs.server.store.tables import Session as SessionRow

__all__ = ["Announcer", "peer_of"]

log = logging.getLogger(__name__)

_P = TypeVar("_P", bound=Peer)


def peer_of(
    row: SessionRow,
    kind: type[_P],
    relay_endpoint: str | None = None,
    relay_hub: str | None = None,
) -> _P:
    """The session as a ``kind``: a :class:`Peer` of ``sync``, or a :class:`PeerAdd`
    (protocol §3.3)."""
    relayed = row.mode != RouteMode.DIRECT
    return kind(
        session_id=row.id,
        channel=row.channel,
        public_key=row.client_public_key,
        address=row.tunnel_address,
        relayed=relayed,
        relay_endpoint=relay_endpoint,
        relay_hub=relay_hub if relayed else None,
    )


class Announcer:
    def __init__(self, hub: RelayHub) -> None:
        self.hub = hub
        self.ledger = AnnouncementLedger()

    def admit(self, row: SessionRow) -> None:
        """The hub lets the session's client attach; the ledger tracks it until its close."""
        self.hub.open_session(row.id, row.channel, row.node_id, row.relay_token_hash)
        self.ledger.admit(row.id)

    async def opened(
        self, row: SessionRow, relay_endpoint: str | None = None, relay_hub: str | None = None
    ) -> None:
        """``peer_add`` to the session's node (with its UDP relay endpoint and its relay
        host's hub, if any); this hub bridges the client's relay link to that endpoint, unless
        a relay host's hub carries the session (both legs meet there)."""
        self._bridge(row.id, None if relay_hub else relay_endpoint)
        await self._send(row.node_id, peer_of(row, PeerAdd, relay_endpoint, relay_hub))

    async def closed(self, row: SessionRow, reason: str) -> None:
        """The hub drops the session (its client link gets 4002) and the node gets
        ``peer_remove``."""
        self.ledger.forget(row.id)
        try:
            self.hub.close_session(row.id, reason)
        except Exception:
            log.exception("hub.close_session failed", extra={"session_id": row.id})
        remove = PeerRemove(
            session_id=row.id, channel=row.channel, public_key=row.client_public_key, reason=reason
        )
        await self._send(row.node_id, remove)

    async def sync(
        self,
        node_id: str,
        rows: Sequence[SessionRow],
        relay: Mapping[str, str | None],
        hubs: Mapping[str, str] | None = None,
    ) -> None:
        """The node's full set of open sessions (sent when its link comes up); ``relay`` maps
        a session id to the UDP relay endpoint the node is to use for it, ``hubs`` to the
        relay host's hub that carries its WebSocket data."""
        hubs = hubs or {}
        for r in rows:
            self._bridge(r.id, None if r.id in hubs else relay.get(r.id))
        peers = [peer_of(r, Peer, relay.get(r.id), hubs.get(r.id)) for r in rows]
        await self._send(node_id, Sync(peers=peers))

    def _bridge(self, session_id: str, relay_endpoint: str | None) -> None:
        try:
            self.hub.bridge_session(session_id, relay_endpoint)
        except Exception:
            log.exception("hub.bridge_session failed", extra={"session_id": session_id})

    async def _send(self, node_id: str, message: ControlMessage) -> None:
        try:
            delivered = await self.hub.send_control(node_id, message.model_dump(mode="json"))
        except Exception:
            log.exception("sending control message failed", extra={"node_id": node_id})
            return
        if not delivered:
            log.debug(
                "node link down; the node gets this in sync",
                extra={"node_id": node_id, "type": message.type},
            )
