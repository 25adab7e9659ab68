"""The node's WireGuard peers, kept equal to what the server says they should be.

The server is the source of truth for who may use the node (it opens and closes sessions); the
node applies ``sync`` (the complete set), ``peer_add`` and ``peer_remove`` to the interface.
Every operation is idempotent: re-adding a present peer changes nothing, removing an absent
one succeeds. A peer whose address is outside the tunnel subnet, is the node's own address, or
collides with another peer's address is refused and logged: a confused or compromised server
cannot hijack the node's address or another client's traffic.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from higgs.protocol.api import client_address_v6

__all__ = ["DesiredPeer", "PeerManager", "PeerRow", "PeerTable", "SyncResult"]

log = logging.getLogger(__name__)


class PeerRow(Protocol):
    """A peer as the interface reports it (osnet's WireGuard dump rows satisfy this)."""

    @property
    def public_key(self) -> str: ...
    @property
    def allowed_ips(self) -> Sequence[str]: ...
    @property
    def rx_bytes(self) -> int: ...
    @property
    def tx_bytes(self) -> int: ...
    @property
    def latest_handshake(self) -> float | None: ...


class PeerTable(Protocol):
    """The node's WireGuard interface, as far as peers go (implemented over osnet)."""

    def peers(self) -> Sequence[PeerRow]: ...
    def set_peer(
        self, public_key: str, allowed_ips: Sequence[str], endpoint: str | None = None
    ) -> None: ...
    def remove_peer(self, public_key: str) -> None: ...


# A UDP relay peer's first initiation is lost when it reaches the relay before the relay has
# opened the session's port (it reads new sessions once a second); the client's initiations
# are then dropped too, as the relay has not learnt our leg. WireGuard would send the next one
# only after 5 s (REKEY_TIMEOUT): a fresh peer, this long after the endpoint was set, sends one
# at once. Then WireGuard's own retries.
REINITIATE_AFTER_S = (0.5, 1.0, 1.5, 2.5, 3.5)
# How long after the start a crashed run's peer endpoints are used (``endpoint_hints``): its
# clients come back with the server's first sync, seconds after; later peers are new ones.
HINTS_FOR_S = 60.0


@dataclass(frozen=True)
class DesiredPeer:
    session_id: str
    channel: int
    public_key: str
    address: str  # "10.77.0.5/32"
    relayed: bool
    # The session's UDP relay endpoint (docs/protocol.md §5): set as the peer's endpoint with
    # a persistent keepalive, so the home router's mapping toward the relay stays open.
    relay_endpoint: str | None = None


@dataclass(frozen=True)
class SyncResult:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    refused: tuple[str, ...]


def _loopback(endpoint: str) -> bool:
    """A bridge's address (a WebSocket-relayed peer): meaningless once its process died."""
    return endpoint.startswith(("127.", "[::1]:"))


def _canonical_ips(ips: Sequence[str]) -> frozenset[str]:
    return frozenset(str(ipaddress.ip_network(ip, strict=False)) for ip in ips)


class PeerManager:
    def __init__(
        self,
        table: PeerTable,
        tunnel: ipaddress.IPv4Interface,
        max_clients: int,
        *,
        on_change: Callable[[list[str]], None] | None = None,
        accepting: Callable[[], bool] | None = None,
        tunnel_v6: ipaddress.IPv6Interface | None = None,
        on_removing: Callable[[Sequence[PeerRow]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        endpoint_hints: dict[str, str] | None = None,
    ) -> None:
        self._table = table
        # Public key -> the endpoint a crashed run's interface had for that peer. A restarted
        # node has lost the session keys, and the client would send a new initiation only
        # when its own watch notices (seconds; WireGuard itself: 15 s): the first time the
        # server gives us such a peer again it is set with an endpoint and a keepalive, so
        # WireGuard initiates to the client at once -- a direct peer's old endpoint, a
        # WebSocket-relayed peer's new bridge (:meth:`initiate_bridged`; the old one died
        # with the process). Used once per key.
        self._hints = dict(endpoint_hints or {})
        self._hints_until = clock() + HINTS_FOR_S
        self._clock = clock
        # The control link applies messages in threads and the agent's re-initiation runs in
        # another: one at a time.
        self._lock = threading.RLock()
        # Relay peers whose endpoint was just set: public key -> (when, initiations resent).
        self._initiating: dict[str, tuple[float, int]] = {}
        self._tunnel = tunnel
        # With IPv6 forwarding each peer also gets the IPv6 address derived from its IPv4 one
        # (the server derives the same: protocol.api.client_address_v6).
        self._tunnel_v6 = tunnel_v6
        self._max_clients = max_clients
        # Told the clients' addresses after every change (per-client traffic shaping).
        self._on_change = on_change
        # False when the node takes no new clients (its monthly volume is used up).
        self._accepting = accepting
        self.sessions: dict[str, DesiredPeer] = {}  # public key -> the session it belongs to
        # Told the final counters of peers about to be removed (the monthly volume count).
        self._on_removing = on_removing

    def _remove_peers(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        if self._on_removing is not None:
            wanted = set(keys)
            try:
                self._on_removing([r for r in self._table.peers() if r.public_key in wanted])
            except Exception as exc:  # counting must not keep a peer that has to go
                log.warning("cannot count removed peers", extra={"why": str(exc)})
        for key in keys:
            self._table.remove_peer(key)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change([p.address for p in self.sessions.values()])

    def _refuse_new(self, peer: DesiredPeer) -> str | None:
        if peer.public_key in self.sessions:
            return None
        if len(self.sessions) >= self._max_clients:
            return f"the node takes at most {self._max_clients} clients"
        if self._accepting is not None and not self._accepting():
            return "the node's volume budget is used up"
        return None

    def _check(self, peer: DesiredPeer, taken: dict[str, str]) -> str | None:
        """Why ``peer`` must be refused, or None."""
        try:
            net = ipaddress.ip_network(peer.address, strict=False)
        except ValueError:
            return f"address {peer.address!r} is not an IP network"
        if net.version != 4 or net.prefixlen != 32:
            return f"address {peer.address} is not a single IPv4 address (/32)"
        addr = net.network_address
        subnet = self._tunnel.network
        if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
            return f"address {peer.address} is not a client address of {subnet}"
        if addr == self._tunnel.ip:
            return f"address {peer.address} is the node's own address"
        owner = taken.get(str(net))
        if owner is not None and owner != peer.public_key:
            return f"address {peer.address} already belongs to another peer"
        return None

    def _apply(self, peer: DesiredPeer, present: dict[str, frozenset[str]]) -> bool:
        """Sets the peer on the interface unless it is already there as wanted."""
        want = _canonical_ips(self.allowed_ips(peer))
        before = self.sessions.get(peer.public_key)
        self.sessions[peer.public_key] = peer
        # The relay endpoint is set once per change only: setting it again would undo the
        # endpoint WireGuard roamed to (e.g. a direct path found later).
        new_endpoint = peer.relay_endpoint is not None and (
            before is None or before.relay_endpoint != peer.relay_endpoint
        )
        if present.get(peer.public_key) == want and not new_endpoint:
            return False
        moved = new_endpoint and before is not None and peer.public_key in present
        if moved:
            # The session moved to another relay host (the first one died, docs/scaleout.md),
            # or a direct device onto a relay lease (its node lost its direct endpoint): a
            # fresh peer initiates a handshake at once, which the relay needs to bind this
            # leg; the old keys would only send data (keepalives start no handshake), which
            # it drops. Removed as any peer is, so its last counters are counted.
            self._remove_peers([peer.public_key])
        self._expire_hints()
        hint = None if peer.relayed else self._hints.pop(peer.public_key, None)
        if new_endpoint:
            self._table.set_peer(peer.public_key, sorted(want), peer.relay_endpoint)
            self._initiating[peer.public_key] = (self._clock(), 0)
        elif hint is not None and not _loopback(hint) and peer.public_key not in present:
            self._table.set_peer(peer.public_key, sorted(want), hint)
        else:
            self._table.set_peer(peer.public_key, sorted(want))
        return True

    def _expire_hints(self) -> None:
        if self._hints and self._clock() > self._hints_until:
            self._hints.clear()

    @property
    def restoring(self) -> bool:
        """Some peer of the crashed run may still be given again (``endpoint_hints``)."""
        return bool(self._hints)

    def initiate_bridged(self, bridges: Mapping[int, str]) -> list[str]:
        """WebSocket-relayed peers the crashed run had (see ``endpoint_hints``), now with a
        bridge (channel -> its local address): set with that endpoint and a keepalive, so
        WireGuard initiates to the client through the relay at once. Returns their session
        ids."""
        with self._lock:
            self._expire_hints()
            done: list[str] = []
            for key, peer in self.sessions.items():
                bridge = bridges.get(peer.channel)
                if (
                    not peer.relayed
                    or peer.relay_endpoint is not None  # on the UDP relay: initiates there
                    or bridge is None
                    or self._hints.pop(key, None) is None
                ):
                    continue
                self._table.set_peer(key, sorted(self.allowed_ips(peer)), bridge)
                done.append(peer.session_id)
            return done

    def allowed_ips(self, peer: DesiredPeer) -> list[str]:
        """The peer's IPv4 address, and its IPv6 one when the node forwards IPv6."""
        ips = [peer.address]
        if self._tunnel_v6 is not None:
            v6 = client_address_v6(
                str(self._tunnel.network), str(self._tunnel_v6.network), peer.address
            )
            if v6 is not None:
                ips.append(f"{v6}/128")
        return ips

    def _present(self) -> dict[str, frozenset[str]]:
        return {row.public_key: _canonical_ips(row.allowed_ips) for row in self._table.peers()}

    def sync(self, desired: Sequence[DesiredPeer]) -> SyncResult:
        """Makes the interface hold exactly ``desired`` (the ``sync`` message)."""
        with self._lock:
            return self._sync(desired)

    def _sync(self, desired: Sequence[DesiredPeer]) -> SyncResult:
        present = self._present()
        wanted: dict[str, DesiredPeer] = {}
        refused: list[str] = []
        taken: dict[str, str] = {}
        for peer in desired:
            why = self._check(peer, taken)
            if why is None and peer.public_key not in wanted and len(wanted) >= self._max_clients:
                why = f"the node takes at most {self._max_clients} clients"
            if why is None and peer.public_key not in present and self._accepting is not None:
                why = None if self._accepting() else "the node's volume budget is used up"
            if why is not None:
                log.warning("peer refused", extra={"session": peer.session_id, "why": why})
                refused.append(peer.session_id)
                continue
            wanted[peer.public_key] = peer
            taken[str(ipaddress.ip_network(peer.address, strict=False))] = peer.public_key
        removed = [key for key in present if key not in wanted]
        self._remove_peers(removed)
        for key in removed:
            self.sessions.pop(key, None)
        for key in list(self.sessions):
            if key not in wanted:
                del self.sessions[key]
        added = [p.session_id for p in wanted.values() if self._apply(p, present)]
        if added or removed:
            log.info("peers synced", extra={"added": len(added), "removed": len(removed)})
        self._changed()
        return SyncResult(tuple(added), tuple(removed), tuple(refused))

    def add(self, peer: DesiredPeer) -> bool:
        """``peer_add``: True when the peer was accepted (already present counts)."""
        with self._lock:
            return self._add(peer)

    def _add(self, peer: DesiredPeer) -> bool:
        taken = {
            str(ipaddress.ip_network(p.address, strict=False)): key
            for key, p in self.sessions.items()
        }
        why = self._check(peer, taken) or self._refuse_new(peer)
        if why is not None:
            log.warning("peer refused", extra={"session": peer.session_id, "why": why})
            return False
        self._apply(peer, self._present())
        self._changed()
        return True

    def remove(self, public_key: str, session_id: str) -> bool:
        """``peer_remove``: removes the peer unless the key has moved on to a newer session
        (a replaced session's remove may arrive after the new session's add)."""
        with self._lock:
            return self._remove(public_key, session_id)

    def _remove(self, public_key: str, session_id: str) -> bool:
        current = self.sessions.get(public_key)
        if current is not None and current.session_id != session_id:
            return False
        self.sessions.pop(public_key, None)
        self._remove_peers([public_key])
        self._changed()
        return True

    @property
    def initiating(self) -> bool:
        """Some relay peer may still need :meth:`reinitiate`."""
        return bool(self._initiating)

    def reinitiate(self) -> list[str]:
        """Relay peers still without a handshake :data:`REINITIATE_AFTER_S` after their
        endpoint was set get a fresh peer (an initiation at once); returns their session
        ids. Called every half second or so by the agent."""
        with self._lock:
            if not self._initiating:
                return []
            now = self._clock()
            rows = {row.public_key: row for row in self._table.peers()}
            resent: list[str] = []
            for key, (since, tries) in list(self._initiating.items()):
                row, peer = rows.get(key), self.sessions.get(key)
                if (
                    row is None
                    or peer is None
                    or peer.relay_endpoint is None
                    or row.latest_handshake
                    or tries >= len(REINITIATE_AFTER_S)
                ):
                    del self._initiating[key]
                    continue
                if now - since < REINITIATE_AFTER_S[tries]:
                    continue
                self._remove_peers([key])  # its (few) bytes counted first
                self._table.set_peer(key, sorted(self.allowed_ips(peer)), peer.relay_endpoint)
                self._initiating[key] = (since, tries + 1)
                resent.append(peer.session_id)
            return resent
