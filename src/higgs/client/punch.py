"""The client's half of hole punching (issue 12; docs/protocol.md §2.7), and the watch that
leaves a direct path that stopped working.

While the tunnel runs over the UDP relay, the daemon asks the server for an offer
(``GET /v1/sessions/{id}/punch``). With one, both ends exchange probes from their WireGuard
ports (:func:`higgs.transport.punch_probe.exchange`); only once the node's probe arrived is
the peer's endpoint moved, in place, to the node's public address (path ``punched``): the
relay carries the traffic until then, and the session keys stay, so the switch has no gap.

:class:`PathWatch` is pure: fed the peer's received-bytes counter, it says when to provoke
traffic (a ping through the tunnel) and when the path is dead (nothing received for
``dead_s`` although we asked). A dead ``punched`` path goes back to the UDP relay in place; a
dead ``direct`` path takes a new route.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from higgs.client.settings import PATH_DEAD_S
from higgs.common.errors import HiggsError
from higgs.osnet.probe_tap import ProbeTap
from higgs.protocol.api import PunchOffer
from higgs.transport.punch_probe import exchange

__all__ = ["PUNCH_KEEPALIVE_S", "PathWatch", "punch"]

log = logging.getLogger(__name__)

PUNCH_KEEPALIVE_S = 2  # as the node's (higgs.node.punch): both NAT mappings stay open


async def punch(offer: PunchOffer, *, port: int, fwmark: int | None) -> bool:
    """True when the node's probe arrived: the path to ``offer.peer_endpoint`` is open."""
    try:
        tap = ProbeTap(port, fwmark=fwmark)
    except HiggsError as exc:
        log.warning("cannot punch: no probe tap (%s)", exc)
        return False
    try:
        return await exchange(
            tap, bytes.fromhex(offer.nonce), offer.peer_endpoint, offer.delay_s(), offer.window_s
        )
    finally:
        tap.close()


@dataclass
class PathWatch:
    """Is a path still carrying anything? Fed ``wg show``'s rx counter each second."""

    dead_s: float = PATH_DEAD_S
    provoke_after_s: float = 1.5
    # None: never. Else after this long quiet, and again each time as long: a new handshake
    # initiation (a restarted node lost our session's keys, and WireGuard would start one only
    # 15 s after its last answer; with our peer restored it answers the initiation at once).
    rehandshake_every_s: float | None = None
    last_rx: int = -1
    last_rx_at: float = 0.0
    provoked: int = field(default=0)
    last_rehandshake_at: float = 0.0

    def reset(self, rx: int, now: float) -> None:
        self.last_rx, self.last_rx_at = rx, now
        self.last_rehandshake_at = now

    def observe(self, rx: int, now: float) -> str:
        """``ok``, ``provoke`` (send something the node answers), ``rehandshake`` (set the
        peer afresh) or ``dead``."""
        if self.last_rx < 0 or rx > self.last_rx:
            self.reset(rx, now)
            return "ok"
        if rx < self.last_rx:
            # The peer was set afresh (our own "rehandshake" re-creates it), so its counter
            # started again from 0: bytes on the new peer are news, none yet is not. Compared
            # with the old peer's count, a busy tunnel looked silent forever and got a new
            # peer every few seconds, dropping whatever was in flight each time.
            if rx > 0:
                self.reset(rx, now)
                return "ok"
            self.last_rx = rx
        quiet = now - self.last_rx_at
        every = self.rehandshake_every_s
        if every is not None and now - self.last_rehandshake_at >= every:
            self.last_rehandshake_at = now
            return "rehandshake"
        if quiet > self.dead_s:
            return "dead"
        if quiet > self.provoke_after_s:
            self.provoked += 1
            return "provoke"
        return "ok"
