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
# A WireGuard keepalive (an empty data message: header and tag) as the tx counter counts it.
# Our own persistent keepalive expects no answer, so sending one owes none; any real packet
# is longer (the payload is padded to 16 bytes).
KEEPALIVE_BYTES = 32


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
    """Is a path still carrying anything? Fed ``wg show``'s rx and tx counters each second.

    Re-handshakes (``rehandshake_after_s`` not None) are for a node restarted after a crash: it
    lost our session's keys and answers only a new initiation, which WireGuard itself would
    send 15 s after the node's last answer. One goes out once the path has been quiet for
    ``rehandshake_after_s`` *and* something we sent since the last thing received (our
    traffic, or the provoking ping) stayed unanswered for ``answer_wait_s``; then one every
    ``rehandshake_every_s`` while still unanswered (the restarted node answers as soon as it
    has our peer back), backing off after ``fast_for_s`` (doubling, at most
    ``rehandshake_max_s``). A tunnel that is merely idle -- nothing sent but our keepalives,
    so nothing owed -- never gets one, however long it is quiet.

    A re-handshake sets the peer afresh, so its counters start again from 0: counters that
    went backwards are read from 0 (anything received since is the node answering). On a path
    that ``leaves`` (direct, punched) ``dead`` comes before any re-handshake: the session must
    be back on the relay within issue 12's 10 s; a relay path is never left here, so there
    the re-handshakes go on.
    """

    dead_s: float = PATH_DEAD_S
    leaves: bool = True  # a dead path is left (direct, punched), see above
    provoke_after_s: float = 1.5
    rehandshake_after_s: float | None = None  # None: never
    rehandshake_every_s: float = 1.0
    fast_for_s: float = 6.0
    rehandshake_max_s: float = 5.0
    # A ping's answer takes milliseconds; the rx counter is read once a second.
    answer_wait_s: float = 0.5
    last_rx: int = -1
    last_rx_at: float = 0.0
    last_tx: int = -1
    # When something was first sent after the last thing received (None: nothing owed).
    unanswered_since: float | None = None
    provoked: int = field(default=0)
    first_rehandshake_at: float | None = None
    next_rehandshake_at: float = 0.0
    gap_s: float = 0.0
    rehandshakes: int = field(default=0)

    def reset(self, rx: int, now: float, tx: int | None = None) -> None:
        self.last_rx, self.last_rx_at = rx, now
        if tx is not None:
            self.last_tx = tx
        self.unanswered_since = None
        self.first_rehandshake_at = None

    def sent(self, now: float) -> None:
        """We sent something the node answers (the provoking ping): an answer is owed."""
        if self.unanswered_since is None:
            self.unanswered_since = now

    def _rehandshake_due(self, now: float) -> bool:
        after = self.rehandshake_after_s
        since = self.unanswered_since
        if after is None or since is None or now - self.last_rx_at < after:
            return False
        if now - since < self.answer_wait_s:
            return False
        if self.first_rehandshake_at is None:
            return True
        return now >= self.next_rehandshake_at

    def _rehandshake(self, now: float) -> str:
        if self.first_rehandshake_at is None:
            self.first_rehandshake_at, self.gap_s = now, self.rehandshake_every_s
        elif now - self.first_rehandshake_at >= self.fast_for_s:
            # Still unanswered after the fast ones: the node is not just restarting.
            self.gap_s = min(self.rehandshake_max_s, self.gap_s * 2)
        # A little early is on time: the loop reading the counters ticks about once a second.
        self.next_rehandshake_at = now + self.gap_s - 0.1
        self.rehandshakes += 1
        return "rehandshake"

    def observe(self, rx: int, now: float, tx: int | None = None) -> str:
        """``ok``, ``provoke`` (send something the node answers, then call :meth:`sent`),
        ``rehandshake`` (set the peer afresh) or ``dead``. ``tx`` None: the sent bytes are
        not known (only what :meth:`sent` was told of is owed an answer)."""
        if 0 <= rx < self.last_rx or (tx is not None and 0 <= tx < self.last_tx):
            # The peer was set afresh (our re-handshake): its counters started from 0.
            self.last_rx, self.last_tx = 0, 0 if tx is not None else self.last_tx
        if self.last_rx < 0 or rx > self.last_rx:
            self.reset(rx, now, tx)
            return "ok"
        if tx is not None:
            if self.last_tx >= 0 and tx - self.last_tx > KEEPALIVE_BYTES:
                self.sent(now)
            self.last_tx = tx
        quiet = now - self.last_rx_at
        dead = quiet > self.dead_s
        if dead and self.leaves:
            return "dead"
        if self._rehandshake_due(now):
            return self._rehandshake(now)
        if dead:
            return "dead"
        if quiet > self.provoke_after_s:
            self.provoked += 1
            return "provoke"
        return "ok"
