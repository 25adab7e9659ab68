"""The node's half of hole punching and steering (issue 12; docs/protocol.md §3.5).

``punch`` (the client runs higgsvpn): at the agreed time both ends send probe datagrams from
their WireGuard ports to each other's public address, which opens both NATs' filters. A probe
heard from the client (same nonce) proves the path works both ways *before* anything changes;
only then is the peer's endpoint moved there, in place (its session keys stay, so traffic
carries on without a gap: make-before-break). Heard nothing in the window: nothing changed,
the session stays on the relay.

``punch`` with ``steer`` (an official WireGuard app, no software of ours): the node moves the
peer's endpoint to the client's public address at once, with a short keepalive; the client's
WireGuard roams to the node's address if its NAT lets those packets in. If the client did not
follow (its packets still come through the relay, or none come), the peer goes back to the
relay endpoint.

A punched peer is watched: no bytes from it for ``dead_s`` (its keepalive is
``PUNCH_KEEPALIVE_S``; a steered app's own is longer: ``STEERED_DEAD_S``) and it goes back to
the relay endpoint, so a dead path (the home
router's public address changed, a NAT mapping expired) is left within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from higgs.common.errors import HiggsError
from higgs.node.peers import DesiredPeer, PeerManager
from higgs.osnet.probe_tap import ProbeTap
from higgs.protocol.control import Punch
from higgs.transport.punch_probe import exchange

__all__ = ["PUNCH_KEEPALIVE_S", "EndpointTable", "Puncher"]

log = logging.getLogger(__name__)

PUNCH_KEEPALIVE_S = 2
"""A punched path's keepalive: keeps both NAT mappings open and lets each end notice within
a few seconds that nothing arrives any more."""
STEERED_DEAD_S = 60.0
"""A steered app sends only its own PersistentKeepalive (25 s in an exported config) when
idle: two of those missed, and its path is dead."""
DEAD_S = 4.0
"""Nothing from a punched client for this long (two of its 2 s keepalives missed, its pings
unanswered): the path is dead. As the client's ``path_dead_s``: whichever end notices first
re-handshakes through the relay, and the session must be back there within 10 s (issue 12)."""
REHANDSHAKE_AFTER_S = 2.0
"""Back on the relay after a dead path and still nothing from the client this long after the
fresh handshake: it was lost (sent before the client's NAT or the relay could pass it), so
another goes out now, not at WireGuard's own retry (REKEY_TIMEOUT, 5 s): the 10 s budget."""
REHANDSHAKES = 2
WATCH_EVERY_S = 1.0
RELAY_KEEPALIVE_S = 25


class EndpointTable(Protocol):
    def set_endpoint(
        self, public_key: str, allowed_ips: Sequence[str], endpoint: str, keepalive: int
    ) -> None: ...

    def remove_peer(self, public_key: str) -> None: ...


class PeerRowWithEndpoint(Protocol):
    @property
    def public_key(self) -> str: ...
    @property
    def endpoint(self) -> str | None: ...
    @property
    def rx_bytes(self) -> int: ...


@dataclass
class _Punched:
    session_id: str
    endpoint: str
    how: str  # "punched" | "steered"
    last_rx: int
    last_rx_at: float


@dataclass
class _Rejoin:
    """A peer back on the relay after its direct path died, until the client is heard."""

    session_id: str
    last_rx: int
    sent_at: float  # the latest fresh handshake
    left: int  # more fresh handshakes allowed


def _since(rx: int, last: int) -> int:
    """``rx`` as a count comparable with ``last``: a peer set afresh (a sync, a re-add) counts
    from zero again, and a count below the last one is all new (``last`` + ``rx``), not
    silence until it passes the old total."""
    return rx if rx >= last else last + rx


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


class Puncher:
    def __init__(
        self,
        port: int,
        peers: PeerManager,
        table: EndpointTable,
        rows: Callable[[], Sequence[PeerRowWithEndpoint]],
        *,
        dead_s: float = DEAD_S,
        tap_factory: Callable[[int], ProbeTap] = ProbeTap,
        watch_every_s: float = WATCH_EVERY_S,
    ) -> None:
        self.port = port
        self._peers = peers
        self._table = table
        self._rows = rows
        self.dead_s = dead_s
        self.watch_every_s = watch_every_s  # a test's is short: the logic, not the wait
        self._tap_factory = tap_factory
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watch: asyncio.Task[None] | None = None
        self.punched: dict[str, _Punched] = {}  # public key → its direct path
        self.rejoining: dict[str, _Rejoin] = {}  # public key → back on the relay, unheard
        self._judging: set[str] = set()  # keys being steered, not yet followed
        self.counters: Counter[str] = Counter()

    def status(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "direct_peers": {
                p.session_id: {"endpoint": p.endpoint, "how": p.how} for p in self.punched.values()
            },
        }

    def handle(self, message: Punch) -> None:
        peer = self._peers.sessions.get(message.public_key)
        if peer is None or peer.session_id != message.session_id:
            self.counters["punch_no_session"] += 1
            log.info("punch for no current session ignored", extra={"session": message.session_id})
            return
        old = self._tasks.pop(message.public_key, None)
        if old is not None:
            old.cancel()
        body = self._steer(message, peer) if message.steer else self._punch(message, peer)
        task = asyncio.get_running_loop().create_task(body, name="punch")
        self._tasks[message.public_key] = task
        task.add_done_callback(lambda t: self._done(message.public_key, t))
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_loop())

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and task.exception() is not None:
            self.counters["punch_failed"] += 1
            log.warning("hole punch failed", exc_info=task.exception())

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *([self._watch] if self._watch else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._watch = None

    # ---- punching ---------------------------------------------------------------------

    async def _punch(self, message: Punch, peer: DesiredPeer) -> None:
        try:
            tap = self._tap_factory(self.port)
        except HiggsError as exc:
            self.counters["punch_no_tap"] += 1
            log.warning("cannot punch: no probe tap", extra={"why": str(exc)})
            return
        try:
            heard = await exchange(
                tap,
                bytes.fromhex(message.nonce),
                message.peer_endpoint,
                message.delay_s(),
                message.window_s,
            )
        finally:
            tap.close()
        if not heard:
            self.counters["punch_unanswered"] += 1
            log.info(
                "hole punch: no probe from the client; staying on the relay",
                extra={"session": message.session_id, "client": message.peer_endpoint},
            )
            return
        await self._move(peer, message.peer_endpoint, "punched")
        self.counters["punched"] += 1
        log.info(
            "hole punched: the peer's endpoint moved to the client's public address",
            extra={"session": message.session_id, "client": message.peer_endpoint},
        )

    async def _steer(self, message: Punch, peer: DesiredPeer) -> None:
        """The app answers nothing to our keepalives: what shows it followed is its own next
        packet (data, or its keepalive, every 25 s in an exported config) arriving from its
        public address. So the window is long (``punch_steer_window_s``) and watched each
        second: a packet through the relay roams our endpoint back (WireGuard) and ends it
        early -- the app's NAT filtered us out, nothing was lost but our keepalives."""
        await asyncio.sleep(message.delay_s())
        before = self._row(peer.public_key)
        rx0 = before.rx_bytes if before is not None else 0
        self._judging.add(peer.public_key)
        try:
            await self._move(peer, message.peer_endpoint, "steered")
            self.punched.pop(peer.public_key, None)  # judged below, not by the watch
            deadline = time.monotonic() + message.window_s
            followed = False
            while time.monotonic() < deadline:
                await asyncio.sleep(min(self.watch_every_s, max(0.0, deadline - time.monotonic())))
                row = await asyncio.to_thread(self._row, peer.public_key)
                if row is None or row.endpoint != message.peer_endpoint:
                    break  # it came through the relay (or the peer went away)
                if row.rx_bytes > rx0:
                    followed = True
                    break
        finally:
            self._judging.discard(peer.public_key)
        if followed:
            assert row is not None
            self.punched[peer.public_key] = _Punched(
                peer.session_id, message.peer_endpoint, "steered", row.rx_bytes, time.monotonic()
            )
            self.counters["steered"] += 1
            log.info(
                "steered: the client roamed to the node's address",
                extra={"session": message.session_id},
            )
            return
        self.counters["steer_not_followed"] += 1
        log.info(
            "steering: the client did not follow (its NAT filters); back to the relay",
            extra={"session": message.session_id},
        )
        await self._back_to_relay(peer)

    async def _move(self, peer: DesiredPeer, endpoint: str, how: str) -> None:
        ips = self._peers.allowed_ips(peer)

        def move() -> None:
            if how == "steered":
                # WireGuard sends a keepalive at once when persistent keepalive is turned on
                # (from 0): the app hears the node's address now, before its own next packet
                # (its passive keepalive, 10 s after our last data) goes out through the relay
                # and roams us back.
                self._table.set_endpoint(peer.public_key, ips, endpoint, 0)
            self._table.set_endpoint(peer.public_key, ips, endpoint, PUNCH_KEEPALIVE_S)

        await asyncio.to_thread(move)
        row = await asyncio.to_thread(self._row, peer.public_key)
        self.rejoining.pop(peer.public_key, None)
        self.punched[peer.public_key] = _Punched(
            peer.session_id, endpoint, how, row.rx_bytes if row else 0, time.monotonic()
        )

    async def _back_to_relay(self, peer: DesiredPeer, *, rehandshake: bool = False) -> None:
        """``rehandshake``: the path died, perhaps with our public address (the relay then
        knows us by the old one and forwards only after a handshake): a re-added peer
        initiates one at once, from wherever we are now."""
        self.punched.pop(peer.public_key, None)
        if peer.relay_endpoint is None:
            return  # a WebSocket-relayed peer: the client's packets bring WireGuard back
        await asyncio.to_thread(self._relay_peer, peer, rehandshake)
        if rehandshake:
            row = await asyncio.to_thread(self._row, peer.public_key)
            self.rejoining[peer.public_key] = _Rejoin(
                peer.session_id, row.rx_bytes if row else 0, time.monotonic(), REHANDSHAKES
            )

    def _relay_peer(self, peer: DesiredPeer, fresh: bool) -> None:
        """The peer on its relay endpoint; ``fresh``: re-added, so it initiates a handshake at
        once (WireGuard sends none within REKEY_TIMEOUT of its last one for a kept peer)."""
        assert peer.relay_endpoint is not None
        if fresh:
            self._table.remove_peer(peer.public_key)
        ips = self._peers.allowed_ips(peer)
        self._table.set_endpoint(peer.public_key, ips, peer.relay_endpoint, RELAY_KEEPALIVE_S)

    async def _check_rejoining(self, rows: Mapping[str, PeerRowWithEndpoint], now: float) -> None:
        """Peers back on the relay: heard from → done; silent for REHANDSHAKE_AFTER_S since
        their fresh handshake → another one (at most REHANDSHAKES)."""
        for key, state in list(self.rejoining.items()):
            peer = self._peers.sessions.get(key)
            row = rows.get(key)
            if peer is None or row is None or peer.session_id != state.session_id:
                self.rejoining.pop(key, None)
            elif _since(row.rx_bytes, state.last_rx) > state.last_rx:
                self.rejoining.pop(key, None)  # the relay carries the session again
            elif now - state.sent_at > REHANDSHAKE_AFTER_S:
                if state.left <= 0:
                    self.rejoining.pop(key, None)  # WireGuard's own retries from here on
                    continue
                state.left -= 1
                self.counters["relay_rehandshake"] += 1
                await asyncio.to_thread(self._relay_peer, peer, True)
                again = await asyncio.to_thread(self._row, key)
                state.last_rx, state.sent_at = (again.rx_bytes if again else 0), now

    def _dead_s(self, state: _Punched) -> float:
        return max(self.dead_s, STEERED_DEAD_S) if state.how == "steered" else self.dead_s

    def reported(self, rows: Sequence[Any]) -> list[Any]:
        """Rows for ``peer_stats``: a peer being steered shows its relay endpoint until the app
        has shown it followed (the server's ``bosonserver sessions`` would otherwise show a
        direct path that an app behind a filtering NAT never had)."""
        out = []
        for row in rows:
            peer = self._peers.sessions.get(row.public_key)
            if row.public_key in self._judging and peer is not None and peer.relay_endpoint:
                row = dataclasses.replace(row, endpoint=peer.relay_endpoint)
            out.append(row)
        return out

    def _row(self, key: str) -> PeerRowWithEndpoint | None:
        return next((r for r in self._rows() if r.public_key == key), None)

    # ---- our address changed -----------------------------------------------------------

    async def address_changed(self) -> int:
        """Our public address changed (the port mapping's external address did): peers on a
        direct path (an exported device above all) still send to the old one, and an official
        app has no server to ask. Turning a peer's persistent keepalive on makes WireGuard send
        one at once, from the new address: the app roams to it if its NAT lets it in (the
        server offers the new endpoint once verified; docs/protocol.md §2.5). Returns how
        many peers were told."""
        rows = await asyncio.to_thread(self._rows)
        told = 0
        for row in rows:
            peer = self._peers.sessions.get(row.public_key)
            if peer is None or not row.endpoint or row.endpoint == peer.relay_endpoint:
                continue
            keep = PUNCH_KEEPALIVE_S if row.public_key in self.punched else 0
            ips = self._peers.allowed_ips(peer)
            await asyncio.to_thread(self._tell, row.public_key, ips, row.endpoint, keep)
            told += 1
        self.counters["address_changed_told"] += told
        log.info("our public address changed: direct peers told", extra={"peers": told})
        return told

    def _tell(self, key: str, ips: Sequence[str], endpoint: str, keep: int) -> None:
        self._table.set_endpoint(key, ips, endpoint, 0)
        self._table.set_endpoint(key, ips, endpoint, PUNCH_KEEPALIVE_S)  # one keepalive now
        if keep != PUNCH_KEEPALIVE_S:
            self._table.set_endpoint(key, ips, endpoint, keep)

    # ---- watching ---------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.watch_every_s)
            if not self.punched and not self.rejoining:
                continue
            try:
                rows = {r.public_key: r for r in await asyncio.to_thread(self._rows)}
            except Exception as exc:
                log.warning("cannot read peers", extra={"why": str(exc)})
                continue
            now = time.monotonic()
            # Before the punched peers: a peer that goes back below was re-added after `rows`.
            await self._check_rejoining(rows, now)
            await self._check_punched(rows, now)

    async def _check_punched(self, rows: Mapping[str, PeerRowWithEndpoint], now: float) -> None:
        """Punched peers: heard from → alive; roamed elsewhere or silent past the dead time →
        back on the relay."""
        for key, state in list(self.punched.items()):
            peer = self._peers.sessions.get(key)
            row = rows.get(key)
            if peer is None or row is None or peer.session_id != state.session_id:
                self.punched.pop(key, None)
                continue
            rx = _since(row.rx_bytes, state.last_rx)
            if rx > state.last_rx:
                state.last_rx_at = now
            state.last_rx = row.rx_bytes
            if row.endpoint != state.endpoint:
                # The client came back by another path (WireGuard roamed): keep the relay's
                # keepalive again.
                self.counters["punch_roamed_away"] += 1
                await self._back_to_relay(peer)
            elif now - state.last_rx_at > self._dead_s(state):
                self.counters["punch_lost"] += 1
                log.warning(
                    "direct path lost: nothing from the client for %.0fs; back to the relay",
                    self._dead_s(state),
                    extra={"session": state.session_id},
                )
                await self._back_to_relay(peer, rehandshake=True)
