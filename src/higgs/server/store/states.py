"""The words stored in the ``state`` and ``mode`` columns, one enum each.

They are the API's Literals (``higgs.protocol.api.NodeState``, ``SessionState``,
``RouteMode``) spelled once for the server's code; a unit test keeps the two in agreement.
A :class:`~enum.StrEnum` member *is* its string, so it binds to SQL and validates as the
Literal unchanged. The hot-path statements of :mod:`higgs.server.store.queries` and the
partial indexes keep the literal ``'open'`` in their SQL text (see there).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["NodeState", "RouteMode", "SessionState"]


class SessionState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class NodeState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"  # missed heartbeats and no link (the offline sweep)
    STOPPED = "stopped"  # deregistered


class RouteMode(StrEnum):
    AUTO = "auto"  # both paths
    DIRECT = "direct"  # only nodes with a reachable endpoint
    RELAY = "relay"  # relay only
