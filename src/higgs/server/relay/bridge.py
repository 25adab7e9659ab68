"""The WebSocket relay's client leg bridged to the session's UDP relay port (issue 11 item 4).

A client whose network blocks UDP reaches the hub over WebSocket; when its session has a UDP
relay port that the node uses (``peer_add.relay_endpoint``), the hub sends the client's
datagrams from one UDP socket per session to that port instead of over the node's WebSocket
link. To the UDP relay this socket is just the session's client leg: it binds it from the
client's own handshake like any other (docs/protocol.md §5.2), so the node, whose network
passes UDP, speaks only UDP. What comes back from the port is framed to the client's link.

The node's WebSocket data path stays the fallback: when the bridge has sent for
:data:`FALLBACK_S` without hearing anything from the port (the node's network blocks UDP, or
the relay is down), the client's datagrams go over the node's link again, and each handshake
initiation is also copied to the port as a probe; the first answer from the port switches
the session back. Only WireGuard's own ciphertext passes, unchanged: a datagram of neither
WireGuard layout (docs/protocol.md §5.1), either way, is dropped and counted
(``higgs_relay_bridge_dropped_total{reason}``).

The socket lives as long as the session (not the client's link): a client reconnecting its
WebSocket keeps its bound leg on the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from higgs.protocol import api
from higgs.protocol.relay import FRAME_DATA, HEADER_SIZE, MAX_FRAME_SIZE, RECORD_HEADER_SIZE

if TYPE_CHECKING:
    from higgs.server.relay.tables import SessionEntry

__all__ = [
    "FALLBACK_S",
    "BridgeDrop",
    "BridgePath",
    "Bridges",
    "datagrams_of",
    "parse_endpoint",
    "wireguard_shaped",
]

log = logging.getLogger(__name__)

# WireGuard answers any data within 10 s (its passive keepalive), handshakes within 5 s.
FALLBACK_S = 15.0
BATCH = 64
_MAX_DATAGRAM = MAX_FRAME_SIZE - HEADER_SIZE - RECORD_HEADER_SIZE
_head = struct.Struct(">BIH").pack
_record_len = struct.Struct(">H").unpack_from

_SIZES = {1: 148, 2: 92, 3: 64}  # handshake messages have one size each; data is ≥ 32
_INITIATION = 1


class BridgeDrop(StrEnum):
    MALFORMED = "malformed"  # not a WireGuard layout (either direction)
    SEND_FAILED = "send_failed"  # the socket refused it (buffer full, ICMP error)
    NO_PEER = "no_peer"  # from the port while the client has no link


def wireguard_shaped(datagram: bytes) -> bool:
    """One of WireGuard's four message layouts by type, reserved zeros and size."""
    n = len(datagram)
    if n < 32 or datagram[1:4] != b"\0\0\0":
        return False
    kind = datagram[0]
    if kind == 4:
        return n <= _MAX_DATAGRAM
    return _SIZES.get(kind) == n


def datagrams_of(payload: bytes) -> Iterator[bytes]:
    """The datagrams of a DATA frame the link already validated (records fill it exactly)."""
    at, end = HEADER_SIZE, len(payload)
    while at < end:
        (size,) = _record_len(payload, at)
        at += RECORD_HEADER_SIZE
        yield payload[at : at + size]
        at += size


def parse_endpoint(text: str) -> tuple[str, int]:
    """``ip:port`` or ``[v6]:port`` (the lease's endpoint); ValueError names what is wrong."""
    host, port = api.parse_endpoint(text)
    return str(ipaddress.ip_address(host)), port


@dataclass(slots=True)
class BridgePath:
    """Which way a bridged session's client datagrams go (pure; ``now`` is monotonic)."""

    heard_at: float | None = None  # last datagram from the UDP port
    unanswered_since: float | None = None  # first send after that

    def sent(self, now: float) -> None:
        if self.unanswered_since is None:
            self.unanswered_since = now

    def heard(self, now: float) -> None:
        self.heard_at, self.unanswered_since = now, None

    def udp(self, now: float) -> bool:
        """True while the port answers, or has not had :data:`FALLBACK_S` to answer."""
        return self.unanswered_since is None or now - self.unanswered_since < FALLBACK_S


@dataclass(slots=True)
class BridgeCounters:
    to_udp_datagrams: int = 0
    to_udp_bytes: int = 0
    from_udp_datagrams: int = 0
    from_udp_bytes: int = 0
    fallback_datagrams: int = 0  # bridged sessions' datagrams sent over the node's link
    drops: dict[BridgeDrop, int] = field(default_factory=lambda: dict.fromkeys(BridgeDrop, 0))


class _Leg:
    """One session's UDP socket, connected to its relay port (so only that port answers)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        endpoint: tuple[str, int],
        on_readable: Callable[[_Leg], None],
    ) -> None:
        family = socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(endpoint)
        except OSError:
            sock.close()
            raise
        self.sock, self.endpoint, self.path, self._loop = sock, endpoint, BridgePath(), loop
        loop.add_reader(sock.fileno(), on_readable, self)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class Bridges(Collector):
    """The hub's bridged sessions: their sockets, their path choice and their counters."""

    def __init__(self, flush: Callable[[], None], clock: Callable[[], float] = time.monotonic):
        self.counters = BridgeCounters()
        self._flush, self._clock = flush, clock
        self._legs: dict[str, _Leg] = {}
        self._sessions: dict[int, SessionEntry] = {}  # id(leg) → its session

    # -- control ---------------------------------------------------------------------------

    def close(self, session_id: str) -> None:
        leg = self._legs.pop(session_id, None)
        if leg is not None:
            self._sessions.pop(id(leg), None)
            leg.close()

    def close_all(self) -> None:
        for session_id in list(self._legs):
            self.close(session_id)

    def path(self, session_id: str) -> BridgePath | None:
        leg = self._legs.get(session_id)
        return None if leg is None else leg.path

    def _leg(self, session: SessionEntry) -> _Leg | None:
        endpoint = session.udp_endpoint
        leg = self._legs.get(session.session_id)
        if leg is not None and leg.endpoint == endpoint:
            return leg
        self.close(session.session_id)
        if endpoint is None:
            return None
        try:
            leg = _Leg(asyncio.get_running_loop(), endpoint, self._readable)
        except OSError as exc:
            log.warning("relay: cannot open the UDP bridge of a session: %s", exc)
            return None
        self._legs[session.session_id] = leg
        self._sessions[id(leg)] = session
        return leg

    # -- client → node -----------------------------------------------------------------------

    def up(self, session: SessionEntry, payload: bytes, count: int, last: bool) -> bool:
        """Sends a client's DATA frame; False when the node's link should carry it instead
        (the caller does that). Initiations are copied to the port even then, as probes."""
        leg = self._leg(session)
        if leg is None:
            return False
        now = self._clock()
        node_link = session.node.link
        over_udp = node_link is None or node_link.closed or leg.path.udp(now)
        c = self.counters
        for datagram in datagrams_of(payload):
            if not wireguard_shaped(datagram):
                c.drops[BridgeDrop.MALFORMED] += 1
                continue
            if not over_udp and datagram[0] != _INITIATION:
                continue
            try:
                leg.sock.send(datagram)
            except OSError:
                c.drops[BridgeDrop.SEND_FAILED] += 1
                continue
            c.to_udp_datagrams += 1
            c.to_udp_bytes += len(datagram)
        leg.path.sent(now)
        if over_udp:
            session.up_datagrams += count
            session.up_bytes += len(payload)
        else:
            c.fallback_datagrams += count
        return over_udp

    # -- node → client -----------------------------------------------------------------------

    def _readable(self, leg: _Leg) -> None:
        session = self._sessions.get(id(leg))
        c = self.counters
        heard = False
        for _ in range(BATCH):
            try:
                datagram = leg.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP unreachable from the port: nothing listens there (yet)
                c.drops[BridgeDrop.SEND_FAILED] += 1
                continue
            if not wireguard_shaped(datagram):
                c.drops[BridgeDrop.MALFORMED] += 1
                continue
            heard = True
            c.from_udp_datagrams += 1
            c.from_udp_bytes += len(datagram)
            dest = None if session is None else session.client_link
            if session is None or dest is None or dest.closed:
                c.drops[BridgeDrop.NO_PEER] += 1
                continue
            frame = _head(FRAME_DATA, session.channel, len(datagram)) + datagram
            session.down_datagrams += 1
            session.down_bytes += len(frame)
            dest.deliver(frame, False)
        if heard:
            leg.path.heard(self._clock())
        self._flush()

    # -- metrics -----------------------------------------------------------------------------

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.counters
        datagrams = CounterMetricFamily(
            "higgs_relay_bridge_datagrams",
            "Datagrams between WebSocket clients and UDP relay ports",
            labels=["direction"],
        )
        datagrams.add_metric(["to_udp"], c.to_udp_datagrams)
        datagrams.add_metric(["from_udp"], c.from_udp_datagrams)
        yield datagrams
        octets = CounterMetricFamily(
            "higgs_relay_bridge_bytes", "Datagram bytes through the bridge", labels=["direction"]
        )
        octets.add_metric(["to_udp"], c.to_udp_bytes)
        octets.add_metric(["from_udp"], c.from_udp_bytes)
        yield octets
        yield CounterMetricFamily(
            "higgs_relay_bridge_fallback_datagrams",
            "Bridged sessions' datagrams carried by the node's WebSocket link instead",
            value=c.fallback_datagrams,
        )
        drops = CounterMetricFamily(
            "higgs_relay_bridge_dropped", "Bridge datagrams dropped, by reason", labels=["reason"]
        )
        for reason, value in c.drops.items():
            drops.add_metric([reason.value], value)
        yield drops
        yield GaugeMetricFamily(
            "higgs_relay_bridge_sessions", "Sessions with an open UDP bridge", value=len(self._legs)
        )
