"""The relay's authorization tables: who may attach, to which channel, and what they sent.

Pure (no sockets, no clock of its own: callers pass ``now``, a monotonic time): the hub
(:mod:`higgs.server.relay.hub`) keeps them from what the services tell it and reads them on
every WebSocket upgrade; the links (:mod:`higgs.server.relay.links`) read a node's channels
and a session's counters on every frame. Each entry holds the link attached to it, seen here
only through :class:`PeerLink`.

- A *node* may open its link with the token whose SHA-256 hex the services allowed
  (:meth:`RelayTables.allow_node`); a new token replaces the old one, :meth:`forget_node`
  revokes it.
- A *session* admits the client holding its relay token to one ``channel`` of one node
  (:meth:`open_session`). A closed session (:meth:`close_session`) is remembered, the last
  ``closed_memory`` of them: its token still upgrades (the client is then told
  ``session_closed`` and closed with 4002 instead of getting a bare 401), and its counters
  still answer. Frames a node sends for a channel closed less than ``closed_channel_ttl_s``
  ago count as ``session_closed`` drops rather than ``wrong_channel``.
- Counters: each session counts its own datagrams and bytes (the data path only does ``+=``
  on its entry); a closed session's are added to the closed totals, so :meth:`totals` is the
  traffic since start.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from higgs.common.secrets import tokens_equal
from higgs.protocol.relay import CloseCode

__all__ = [
    "CLOSED_CHANNEL_TTL_S",
    "CLOSED_MEMORY",
    "NodeEntry",
    "PeerLink",
    "RelayTables",
    "SessionEntry",
]

CLOSED_MEMORY = 65_536  # closed sessions remembered (for 4002 and their counters)
CLOSED_CHANNEL_TTL_S = 120.0  # node frames for a just-closed channel count as session_closed


class PeerLink(Protocol):
    """A link attached to an entry, as the hub and the other end's link use it."""

    closed: bool
    paused: bool
    # Frames collected for the next coalesced write (None: nothing pending).
    pending: list[bytes] | None
    raw: asyncio.Transport | None

    def deliver(self, payload: bytes, last: bool) -> None: ...

    def send_text(self, message: dict[str, Any]) -> bool: ...

    def close(self, code: CloseCode, reason: str = "") -> None: ...


@dataclass(slots=True, eq=False)
class NodeEntry:
    node_id: str
    token_hash: str | None = None
    link: PeerLink | None = None
    channels: dict[int, SessionEntry] = field(default_factory=dict)
    closed_channels: dict[int, float] = field(default_factory=dict)  # channel → closed at


@dataclass(slots=True, eq=False)
class SessionEntry:
    session_id: str
    channel: int
    node: NodeEntry
    token_hash: str
    client_link: PeerLink | None = None
    closed: bool = False
    close_reason: str = ""
    up_datagrams: int = 0  # client → node
    up_bytes: int = 0
    down_datagrams: int = 0  # node → client
    down_bytes: int = 0
    reported: int = 0  # datagrams at the last activity report
    # The session's UDP relay port, when the node uses it: the client's datagrams are
    # bridged there (higgs.server.relay.bridge) instead of over the node's link.
    udp_endpoint: tuple[str, int] | None = None


class RelayTables:
    def __init__(
        self,
        *,
        closed_memory: int = CLOSED_MEMORY,
        closed_channel_ttl_s: float = CLOSED_CHANNEL_TTL_S,
    ) -> None:
        self.closed_memory = closed_memory
        self.closed_channel_ttl_s = closed_channel_ttl_s
        self.nodes: dict[str, NodeEntry] = {}
        self.sessions: dict[str, SessionEntry] = {}
        self._node_tokens: dict[str, NodeEntry] = {}
        self._session_tokens: dict[str, SessionEntry] = {}
        self._closed: OrderedDict[str, SessionEntry] = OrderedDict()
        self._closed_tokens: dict[str, SessionEntry] = {}
        # Traffic of sessions already closed; open sessions count their own.
        self.closed_up_datagrams = 0
        self.closed_up_bytes = 0
        self.closed_down_datagrams = 0
        self.closed_down_bytes = 0

    # -- nodes -------------------------------------------------------------------------------

    def allow_node(self, node_id: str, token_hash: str) -> NodeEntry:
        """The node may attach with this token (a previous token stops working)."""
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeEntry(node_id)
        if node.token_hash is not None and not tokens_equal(node.token_hash, token_hash):
            self._node_tokens.pop(node.token_hash, None)
        node.token_hash = token_hash
        self._node_tokens[token_hash] = node
        return node

    def forget_node(self, node_id: str) -> NodeEntry | None:
        """The node may no longer attach. Returns its entry (whose link the caller closes),
        or None when it was unknown; the entry stays while sessions still name it."""
        node = self.nodes.get(node_id)
        if node is None:
            return None
        if node.token_hash is not None:
            self._node_tokens.pop(node.token_hash, None)
            node.token_hash = None
        if not node.channels:
            del self.nodes[node_id]
        return node

    def node_by_token(self, token_hash: str) -> NodeEntry | None:
        return self._node_tokens.get(token_hash)

    def release_node(self, node: NodeEntry) -> None:
        """The node's link went: drop its entry if nothing needs it any more."""
        if node.link is None and not node.channels and node.token_hash is None:
            self.nodes.pop(node.node_id, None)

    # -- sessions ----------------------------------------------------------------------------

    def open_session(
        self, session_id: str, channel: int, node_id: str, token_hash: str
    ) -> SessionEntry:
        """Admits the token's holder to ``channel`` of the node. Opening an open session
        again on the same channel and node only replaces its token; ValueError when the
        session is open elsewhere or the channel is taken."""
        existing = self.sessions.get(session_id)
        if existing is not None:
            if existing.channel == channel and existing.node.node_id == node_id:
                self._session_tokens.pop(existing.token_hash, None)
                existing.token_hash = token_hash
                self._session_tokens[token_hash] = existing
                return existing
            raise ValueError(f"session {session_id} is already open on another channel or node")
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeEntry(node_id)
        taken = node.channels.get(channel)
        if taken is not None:
            raise ValueError(f"channel {channel} of node {node_id} is used by {taken.session_id}")
        session = SessionEntry(session_id, channel, node, token_hash)
        self.sessions[session_id] = session
        self._session_tokens[token_hash] = session
        node.channels[channel] = session
        node.closed_channels.pop(channel, None)
        return session

    def close_session(self, session_id: str, reason: str, now: float) -> SessionEntry | None:
        """Stops admitting and forwarding for the session. Returns its entry (whose client
        link the caller tells and closes), or None when it was not open."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return None
        session.closed = True
        session.close_reason = reason
        self._session_tokens.pop(session.token_hash, None)
        node = session.node
        if node.channels.get(session.channel) is session:
            del node.channels[session.channel]
            node.closed_channels[session.channel] = now
        self.release_node(node)
        self._remember_closed(session)
        return session

    def session_by_token(self, token_hash: str) -> SessionEntry | None:
        """The open session of this token, else a remembered closed one, else None."""
        session = self._session_tokens.get(token_hash)
        if session is None:
            session = self._closed_tokens.get(token_hash)
        return session

    def counters(self, session_id: str) -> tuple[int, int]:
        """(datagrams, bytes) of the session in both directions; zeros when unknown."""
        session = self.sessions.get(session_id) or self._closed.get(session_id)
        if session is None:
            return (0, 0)
        return (
            session.up_datagrams + session.down_datagrams,
            session.up_bytes + session.down_bytes,
        )

    def totals(self) -> tuple[int, int, int, int]:
        """Datagrams and bytes to nodes, then to clients, since start: summed when asked (at
        scrape time) so the data path only counts per session."""
        up_d, up_b = self.closed_up_datagrams, self.closed_up_bytes
        down_d, down_b = self.closed_down_datagrams, self.closed_down_bytes
        for s in self.sessions.values():
            up_d += s.up_datagrams
            up_b += s.up_bytes
            down_d += s.down_datagrams
            down_b += s.down_bytes
        return up_d, up_b, down_d, down_b

    # -- the periodic sweep ------------------------------------------------------------------

    def active_sessions(self) -> list[str]:
        """Sessions that forwarded something since the previous call."""
        active = []
        for session in self.sessions.values():
            seen = session.up_datagrams + session.down_datagrams
            if seen != session.reported:
                session.reported = seen
                active.append(session.session_id)
        return active

    def expire_closed_channels(self, now: float) -> None:
        """Forgets channels closed longer than ``closed_channel_ttl_s`` ago."""
        cutoff = now - self.closed_channel_ttl_s
        for node in self.nodes.values():
            if node.closed_channels:
                for channel, closed_at in list(node.closed_channels.items()):
                    if closed_at < cutoff:
                        del node.closed_channels[channel]

    def _remember_closed(self, session: SessionEntry) -> None:
        self.closed_up_datagrams += session.up_datagrams
        self.closed_up_bytes += session.up_bytes
        self.closed_down_datagrams += session.down_datagrams
        self.closed_down_bytes += session.down_bytes
        self._closed[session.session_id] = session
        self._closed_tokens[session.token_hash] = session
        while len(self._closed) > self.closed_memory:
            _, old = self._closed.popitem(last=False)
            self._closed_tokens.pop(old.token_hash, None)
