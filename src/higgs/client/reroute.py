"""When the daemon takes a new route: pure decisions over what it observed, no I/O.

The daemon's loops feed these with the tunnel in use, the peer's counters (``wg show``) and
the server's answers; the daemon then calls :meth:`Connector.switch_route`.
"""

from __future__ import annotations

import time

from higgs.client.connect import PeerStats, Tunnel

__all__ = ["SESSION_GONE", "STALE_HANDSHAKE_S", "reroute_reason", "session_gone"]

# WireGuard re-handshakes every 2 minutes while traffic (or keepalive) flows; a peer whose
# last handshake is older than this is gone (REJECT_AFTER_TIME is 180 s).
STALE_HANDSHAKE_S = 200.0
# A renew answered with one of these: the server no longer has our session (expired, closed,
# or its node went away), so renewing again cannot help.
SESSION_GONE = frozenset({404, 409, 410})


def session_gone(status: int | None) -> bool:
    return status in SESSION_GONE


def reroute_reason(
    tunnel: Tunnel,
    stats: PeerStats | None,
    *,
    now: float | None = None,
    stale_s: float = STALE_HANDSHAKE_S,
) -> str | None:
    """Why ``tunnel`` is dead and a new route is needed, or None while it is fine."""
    if tunnel.relay is not None and tunnel.relay.closed_reason is not None:
        return f"relay link closed: {tunnel.relay.closed_reason}"
    now = time.time() if now is None else now
    age = stats.handshake_age(now) if stats is not None else None
    since = now - tunnel.connected_at
    if since > stale_s and (age is None or age > stale_s):
        return f"no handshake with node {tunnel.route.node.node_id} for {stale_s:g}s"
    return None
