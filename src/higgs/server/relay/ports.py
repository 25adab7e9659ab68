"""The seam between the relay hub and the rest of the server.

The hub (``higgs.server.relay.hub``) owns the WebSocket listener and the data path; it knows
nothing about the database. The server's services own the truth (nodes, sessions, tokens) and
tell the hub, through :class:`RelayHub`, which nodes and sessions may connect. The hub reports
what happens on its links through :class:`RelayEvents`. Both sides keep their calls cheap:
the hub authenticates a WebSocket upgrade synchronously from its in-memory tables.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["RelayEvents", "RelayHub"]


class RelayEvents(Protocol):
    """Implemented by the server's services; called by the hub on its event loop."""

    async def node_link_up(self, node_id: str) -> None:
        """A node's link was accepted (the hub already sent ``hello``); send it ``sync``."""

    async def node_link_down(self, node_id: str) -> None:
        """A node's link closed (any reason)."""

    async def node_message(self, node_id: str, message: dict[str, Any]) -> None:
        """A control (text) message from a node, already parsed from JSON."""

    def session_activity(self, session_id: str) -> None:
        """Relay traffic was seen on a session (called at most about once a second each)."""


class RelayHub(Protocol):
    """Implemented by the hub; called by the server's services."""

    def allow_node(self, node_id: str, token_hash: str) -> None:
        """A node with this token hash (SHA-256 hex of ``hgn_…``) may open its link."""

    def forget_node(self, node_id: str, reason: str) -> None:
        """The node may no longer connect; an open link is closed (4001)."""

    def node_offline(self, node_id: str, reason: str) -> None:
        """The node is gone for good (deregistered, or offline past its grace): its client
        links are closed with 4009 so that clients fail over at once. Its sessions stay
        admitted until :meth:`close_session`."""

    def open_session(self, session_id: str, channel: int, node_id: str, token_hash: str) -> None:
        """The client holding the relay token with this hash may attach to ``channel``."""

    def close_session(self, session_id: str, reason: str) -> None:
        """Stop forwarding for the session; its client link is closed with 4002."""

    def bridge_session(self, session_id: str, endpoint: str | None) -> None:
        """The node reaches the session through this UDP relay ``ip:port`` (None: not, or
        no longer): the client's relay link is bridged to it (docs/protocol.md §3.6)."""

    async def send_control(self, node_id: str, message: dict[str, Any]) -> bool:
        """Sends a control message to a node; False when the node has no open link."""

    def is_node_connected(self, node_id: str) -> bool: ...

    def session_counters(self, session_id: str) -> tuple[int, int]:
        """(datagrams, bytes) forwarded for the session in both directions so far."""
        ...
