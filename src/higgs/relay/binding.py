"""Handshake-confirmed binding of a UDP relay session's two legs (a pure state machine).

One session = one relay port, two legs: the *client* leg and the *node* leg, each an
``(ip, port)`` the relay forwards to. A leg is learned only from WireGuard's own handshake and
bound only when the *other* side's response confirms it (research/datapath.md §1), so an
attacker who knows the port but is not on the path can neither redirect nor read a session.
The rules, in the order :meth:`Binding.receive` applies them (docs/protocol.md §5 has the
same table and its test vectors):

1. Not a WireGuard message (:func:`higgs.relay.wgmsg.parse`) → drop ``malformed``.
2. Data (type 4) from the bound client leg → the node leg; from the bound node leg → the
   client leg; from any other source → drop ``unbound_source`` (the receiver index is not
   trusted: it is outside the AEAD); the other leg not bound yet → drop ``no_peer``.
3. Initiation (type 1): mac1 valid for the node's key → it comes from the client side; valid
   for the client's key → from the node side; neither → drop ``bad_mac1``. It is remembered
   as *pending* under its sender index (the first source for an index wins; at most
   ``max_pending`` for ``pending_ttl`` seconds) and as the *candidate* of its side (from a
   source that is not a bound leg: at most 10 per second, else ``rate_limited``). It is
   forwarded to the other side's bound leg, else (from the node side) to the client's
   *starting address*, else to that side's candidate, else dropped ``no_peer``. No leg
   changes.
4. Response (type 2): mac1 must be valid for the initiator's key (``bad_mac1``) and its
   receiver index must be the sender index of a pending initiation from the other side
   (else ``unconfirmed``); while the client leg has a starting address and was never bound,
   a response from the client side must come from that address (else ``unconfirmed``).
   Then the initiation's source becomes the initiator's leg and the response's source the
   responder's leg; the response goes to the initiator.
5. Cookie reply (type 3): forwarded to the initiator of the pending initiation its receiver
   index names, if it comes from the other side's leg, candidate or starting address; else
   ``unconfirmed``.

The *starting address* (``client_start``) is where the server last saw a stock app whose
node lost its direct endpoint (issue 18: a direct device moved onto a relay lease). The app
has never heard of the relay, so it cannot initiate toward it; the node's initiations go to
the app instead, and the app, answering an authenticated initiation from ``relay_ip:port``,
roams there (WireGuard follows the source of authenticated packets). It is spent by the first
bind: from then on the client leg moves by the ordinary rules.

Each bind or rebind bumps :attr:`Binding.generation`: the kernel path reinstalls the flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from higgs.relay import wgmsg

__all__ = ["Addr", "Binding", "Drop", "Event", "Side", "Verdict"]

Addr = tuple[str, int]

PENDING_TTL_S = 10.0  # a response later than REKEY_TIMEOUT (5 s) x 2 is not waited for
MAX_PENDING = 8
# Initiations from sources that are not a bound leg, per second and session: a WireGuard peer
# sends one per 5 s at most (REKEY_TIMEOUT), so this only caps a flood toward the peer.
STRANGER_INITIATIONS_PER_S = 10


class Side(StrEnum):
    CLIENT = "client"
    NODE = "node"


class Drop(StrEnum):
    MALFORMED = "malformed"
    BAD_MAC1 = "bad_mac1"
    UNBOUND_SOURCE = "unbound_source"
    NO_PEER = "no_peer"
    UNCONFIRMED = "unconfirmed"
    RATE_LIMITED = "rate_limited"


class Event(StrEnum):
    BIND = "bind"  # both legs bound for the first time
    REBIND = "rebind"  # a bound leg moved to a new address
    CANDIDATE = "candidate"  # a handshake from a new source of a bound session, pending


@dataclass(frozen=True, slots=True)
class Verdict:
    to: Addr | None = None
    drop: Drop | None = None
    event: Event | None = None


_DROPS = {reason: Verdict(drop=reason) for reason in Drop}


def _other(side: Side) -> Side:
    return Side.NODE if side is Side.CLIENT else Side.CLIENT


@dataclass(slots=True)
class _Pending:
    side: Side
    source: Addr
    at: float


@dataclass(slots=True)
class Binding:
    """The legs of one session. ``client_key``/``node_key``: the 32-byte WireGuard public keys."""

    client_key: bytes
    node_key: bytes
    pending_ttl: float = PENDING_TTL_S
    max_pending: int = MAX_PENDING
    client: Addr | None = None
    node: Addr | None = None
    # The client leg's starting address (set by the server for a device that was direct; see
    # the module's docstring): the node's initiations go there until the client leg binds.
    client_start: Addr | None = None
    generation: int = 0
    _to_node_mac: bytes = b""
    _to_client_mac: bytes = b""
    _candidates: dict[Side, Addr] = field(default_factory=dict)
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _window: float = -1.0
    _window_count: int = 0

    def __post_init__(self) -> None:
        self._to_node_mac = wgmsg.mac1_key(self.node_key)
        self._to_client_mac = wgmsg.mac1_key(self.client_key)

    @property
    def bound(self) -> bool:
        return self.client is not None and self.node is not None

    def leg(self, side: Side) -> Addr | None:
        return self.client if side is Side.CLIENT else self.node

    def restore(self, client: Addr | None, node: Addr | None) -> None:
        """Legs a previous run of the relay bound (after a restart, from the lease). Both
        known: they are the legs again, with no new event -- the state the relay had when it
        stopped, each leg confirmed then by rule 4 -- so the session's data flows as soon as
        the relay is back, instead of after the peers' next handshake (wireguard-go initiates
        one only 15 s after its last answer). A leg that moved meanwhile is followed by the
        usual rules (its next handshake). Only one known: it becomes its side's *candidate*,
        never a leg; a candidate only receives initiations (rule 3), so the first initiation
        reaches the other peer and its response binds the session (rule 4)."""
        if client is not None and node is not None and not self.bound:
            self.client, self.node = client, node
            self.client_start = None  # bound before: the starting address is spent
            self.generation += 1
            return
        if client is not None:
            self._candidates.setdefault(Side.CLIENT, client)
        if node is not None:
            self._candidates.setdefault(Side.NODE, node)

    def receive(self, source: Addr, datagram: bytes, now: float) -> Verdict:
        kind = datagram[0] if datagram else 0
        if kind == 4 and len(datagram) >= wgmsg.MIN_DATA_SIZE and datagram[1:4] == b"\0\0\0":
            # The hot path: no parse, no allocation but the verdict.
            if source == self.client:
                return Verdict(to=self.node) if self.node is not None else _DROPS[Drop.NO_PEER]
            if source == self.node:
                return Verdict(to=self.client) if self.client is not None else _DROPS[Drop.NO_PEER]
            return _DROPS[Drop.UNBOUND_SOURCE]
        try:
            msg = wgmsg.parse(datagram)
        except wgmsg.MalformedMessage:
            return _DROPS[Drop.MALFORMED]
        if msg.type is wgmsg.MsgType.INITIATION:
            return self._initiation(source, datagram, msg, now)
        if msg.type is wgmsg.MsgType.RESPONSE:
            return self._response(source, datagram, msg, now)
        if msg.type is wgmsg.MsgType.COOKIE_REPLY:
            return self._cookie(source, msg, now)
        return _DROPS[Drop.MALFORMED]  # type 4 shorter than its minimum

    def _side_of(self, datagram: bytes) -> Side | None:
        """Which side sent a handshake message: the side whose *peer's* key keys its mac1."""
        if wgmsg.mac1_valid(datagram, self._to_node_mac):
            return Side.CLIENT
        if wgmsg.mac1_valid(datagram, self._to_client_mac):
            return Side.NODE
        return None

    def _expire(self, now: float) -> None:
        cutoff = now - self.pending_ttl
        for index in [i for i, p in self._pending.items() if p.at < cutoff]:
            del self._pending[index]

    def _initiation(self, source: Addr, datagram: bytes, msg: wgmsg.Message, now: float) -> Verdict:
        side = self._side_of(datagram)
        if side is None:
            return _DROPS[Drop.BAD_MAC1]
        assert msg.sender is not None
        if source != self.leg(side):
            if now - self._window >= 1.0:
                self._window, self._window_count = now, 0
            self._window_count += 1
            if self._window_count > STRANGER_INITIATIONS_PER_S:
                return _DROPS[Drop.RATE_LIMITED]
        self._expire(now)
        known = self._pending.get(msg.sender)
        if known is None and len(self._pending) >= self.max_pending:
            del self._pending[next(iter(self._pending))]  # the oldest
        if known is None or (known.source == source and known.side is side):
            self._pending[msg.sender] = _Pending(side, source, now)
        self._candidates[side] = source
        peer = self.leg(_other(side))
        if peer is None and side is Side.NODE:
            # The server's starting address first: a stranger's initiation with a valid mac1
            # (anyone who knows the node's public key can make one) sets a candidate, and
            # must not divert the node's initiations away from the app.
            peer = self.client_start
        peer = peer or self._candidates.get(_other(side))
        event = Event.CANDIDATE if self.bound and source != self.leg(side) else None
        if peer is None:
            return Verdict(drop=Drop.NO_PEER, event=event)
        return Verdict(to=peer, event=event)

    def _response(self, source: Addr, datagram: bytes, msg: wgmsg.Message, now: float) -> Verdict:
        side = self._side_of(datagram)
        if side is None:
            return _DROPS[Drop.BAD_MAC1]
        assert msg.receiver is not None
        self._expire(now)
        pending = self._pending.get(msg.receiver)
        if pending is None or pending.side is side:
            return _DROPS[Drop.UNCONFIRMED]
        if side is Side.CLIENT and self.client_start is not None and source != self.client_start:
            # Only the app at its starting address answers the initiation sent there.
            return _DROPS[Drop.UNCONFIRMED]
        del self._pending[msg.receiver]
        was_bound = self.bound
        before = (self.client, self.node)
        if side is Side.NODE:
            self.client, self.node = pending.source, source
        else:
            self.client, self.node = source, pending.source
        event: Event | None = None
        if not was_bound:
            event = Event.BIND
        elif (self.client, self.node) != before:
            event = Event.REBIND
        if event is not None:
            self.generation += 1
        self.client_start = None  # spent: the client leg is bound
        return Verdict(to=pending.source, event=event)

    def _cookie(self, source: Addr, msg: wgmsg.Message, now: float) -> Verdict:
        assert msg.receiver is not None
        self._expire(now)
        pending = self._pending.get(msg.receiver)
        if pending is None:
            return _DROPS[Drop.UNCONFIRMED]
        other = _other(pending.side)
        start = self.client_start if other is Side.CLIENT else None
        if source not in (self.leg(other), self._candidates.get(other), start):
            return _DROPS[Drop.UNCONFIRMED]
        return Verdict(to=pending.source)
