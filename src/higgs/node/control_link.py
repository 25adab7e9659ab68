"""The node's one WebSocket to the server: control messages and relayed sessions.

Text frames carry control messages (docs/protocol.md §3.3): ``sync``, ``peer_add`` and
``peer_remove`` are applied to the WireGuard interface through :class:`PeerManager`, in the
order they arrive; a message this version does not understand is logged and ignored. Every
stats interval the node sends ``peer_stats``.

Binary frames carry relayed sessions. Each relayed session gets its own local UDP socket
(:class:`~higgs.transport.udp_bridge.UdpBridge`) that talks to the local WireGuard port, so
WireGuard sees each relayed client as a distinct endpoint ``127.0.0.1:<port>`` and roams
naturally when the client switches between relay and direct.

A relayed peer with a ``relay_hub`` (a relay host's WebSocket hub, docs/scaleout.md) carries
its data on a data-only link to that hub instead (:class:`~higgs.node.hub_links.HubLinks`,
one per hub, shared by its sessions); control stays on this link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from higgs.node.hub_links import HubLinks
from higgs.node.metrics import peer_stats_with_endpoints
from higgs.node.peers import DesiredPeer, PeerManager, PeerRow
from higgs.protocol import control
from higgs.transport.relay_link import RelayLink
from higgs.transport.udp_bridge import UdpBridge

__all__ = ["ControlLink"]

log = logging.getLogger(__name__)

# A relayed session's first datagrams (the client's handshake initiation) can arrive in the
# binary frames right behind its ``peer_add`` (or the ``sync`` after a reconnect), while that
# message still waits in the inbox or its peer is being added. Dropped, the initiation costs a
# WireGuard retry (0.5-5 s); held, it goes to WireGuard as soon as the bridge is open. Bounded:
# an initiation and a few retries or data packets per channel, and channels only for the
# messages now in flight.
PENDING_PER_CHANNEL = 16
PENDING_CHANNELS = 4096


def _desired(peer: control.Peer) -> DesiredPeer:
    return DesiredPeer(
        session_id=peer.session_id,
        channel=peer.channel,
        public_key=peer.public_key,
        address=peer.address,
        relayed=peer.relayed,
        relay_endpoint=peer.relay_endpoint,
    )


def _relayed_channels(message: dict[str, Any]) -> list[int]:
    """The relayed channels a raw ``peer_add`` or ``sync`` names, read before validation
    (``handle`` validates; a malformed entry here only means nothing is held for it)."""
    kind = message.get("type")
    if kind == "peer_add":
        peers: Any = [message]
    elif kind == "sync":
        peers = message.get("peers")
        if not isinstance(peers, list):
            return []
    else:
        return []
    return [
        p["channel"]
        for p in peers
        if isinstance(p, dict) and p.get("relayed") is True and type(p.get("channel")) is int
    ]


class ControlLink:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        peers: PeerManager,
        peer_rows: Callable[[], Sequence[PeerRow]],
        wg_port: int,
        stats_interval_s: float = 15.0,
        on_punch: Callable[[control.Punch], None] | None = None,
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        self._peers = peers
        self._on_synced = on_synced  # after each sync is applied (the agent's start-up waits)
        self._on_punch = on_punch  # hole punching and steering (higgs.node.punch)
        self._peer_rows = peer_rows
        self._wg = ("127.0.0.1", wg_port)
        self.stats_interval_s = stats_interval_s
        self._link = RelayLink(url, token, on_data=self._on_data, on_text=self._on_text)
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self._bridges: dict[int, UdpBridge] = {}
        # channel -> datagrams held until its bridge opens (see PENDING_PER_CHANNEL)
        self._pending: dict[int, list[bytes]] = {}
        self._hubs = HubLinks(token, on_data=self._on_data)
        self._tasks: list[asyncio.Task[None]] = []
        self.counters: Counter[str] = Counter()

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def relayed_channels(self) -> list[int]:
        return sorted(self._bridges)

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "relayed_sessions": len(self._bridges),
            "held_channels": len(self._pending),
            "peers": len(self._peers.sessions),
            "counters": dict(self.counters),
            "link_dropped": self._link.dropped,
            "link_malformed": self._link.malformed,
            "hub_links": self._hubs.status(),
        }

    async def start(self) -> None:
        self._link.start()
        self._tasks = [
            asyncio.create_task(self._process(), name="control-inbox"),
            asyncio.create_task(self._report(), name="peer-stats"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._link.close()
        await self._hubs.close()
        for bridge in self._bridges.values():
            bridge.close()
        self._bridges.clear()
        self._pending.clear()

    async def wait_closed(self) -> tuple[int | None, str]:
        """Returns when the link stopped for good (e.g. 4001: our token is not valid)."""
        closed = await self._link.wait_closed()
        return closed.code, closed.reason

    # ---- data path ---------------------------------------------------------------------

    def _on_data(self, channel: int, datagrams: list[memoryview]) -> None:
        bridge = self._bridges.get(channel)
        if bridge is not None:
            bridge.send(datagrams)
            return
        held = self._pending.get(channel)
        if held is None:
            self.counters["data_no_session"] += len(datagrams)
            return
        room = PENDING_PER_CHANNEL - len(held)
        # Copies: the link reuses the buffer these views point into.
        held.extend(bytes(d) for d in datagrams[:room])
        self.counters["data_held"] += min(room, len(datagrams))
        if len(datagrams) > room:
            self.counters["data_held_overflow"] += len(datagrams) - room

    async def _open_bridge(self, channel: int, hub: str | None = None) -> None:
        self._hubs.route(channel, hub)
        if channel in self._bridges:
            return
        control, hubs = self._link, self._hubs

        def to_relay(datagrams: list[bytes]) -> None:
            (hubs.link_for(channel) or control).send_datagrams(channel, datagrams)

        bridge = await UdpBridge.open(to_relay, peer=self._wg)
        self._bridges[channel] = bridge
        held = self._pending.pop(channel, None)
        if held:
            bridge.send(held)

    async def _initiate_bridged(self, channels: list[int]) -> None:
        """A restarted node's relayed peers initiate through their new bridges
        (:meth:`PeerManager.initiate_bridged`)."""
        bridges = {}
        for channel in channels:
            bridge = self._bridges.get(channel)
            if bridge is not None:
                host, port = bridge.local_address[:2]
                bridges[channel] = f"{host}:{port}"
        if bridges and self._peers.restoring:
            await asyncio.to_thread(self._peers.initiate_bridged, bridges)

    def _close_bridge(self, channel: int) -> None:
        self._pending.pop(channel, None)
        self._hubs.route(channel, None)
        bridge = self._bridges.pop(channel, None)
        if bridge is not None:
            bridge.close()

    # ---- control -----------------------------------------------------------------------

    def _on_text(self, message: dict[str, Any]) -> None:
        try:
            self._inbox.put_nowait(message)
        except asyncio.QueueFull:
            self.counters["control_dropped"] += 1
            return
        for channel in _relayed_channels(message):
            if channel not in self._bridges and len(self._pending) < PENDING_CHANNELS:
                self._pending.setdefault(channel, [])

    def _drop_pending(self, message: dict[str, Any]) -> None:
        """Forgets what was held for a message's channels that got no bridge (refused)."""
        for channel in _relayed_channels(message):
            if channel not in self._bridges:
                held = self._pending.pop(channel, None)
                if held:
                    self.counters["data_no_session"] += len(held)

    async def _process(self) -> None:
        while True:
            raw = await self._inbox.get()
            try:
                await self.handle(raw)
            except Exception:  # one bad message must not stop the control link
                self.counters["control_failed"] += 1
                log.exception("control message failed", extra={"type": str(raw.get("type"))})
            finally:
                self._drop_pending(raw)

    async def handle(self, raw: dict[str, Any]) -> None:
        try:
            message = control.parse_obj(raw)
        except control.ControlError as exc:
            self.counters["control_invalid"] += 1
            log.warning("invalid control message ignored", extra={"why": str(exc)})
            return
        if isinstance(message, control.UnknownMessage):
            self.counters["control_unknown"] += 1
            log.info("unknown control message ignored", extra={"type": message.type})
            return
        self.counters[f"control_{message.type}"] += 1
        if isinstance(message, control.Hello):
            if message.heartbeat_interval_s:
                self.stats_interval_s = max(1.0, float(message.heartbeat_interval_s))
            log.info("control link accepted", extra={"node_id": message.node_id})
        elif isinstance(message, control.Sync):
            wanted = [_desired(p) for p in message.peers]
            result = await asyncio.to_thread(self._peers.sync, wanted)
            refused = set(result.refused)
            relayed = {
                p.channel: p.relay_hub
                for p in message.peers
                if p.relayed and p.session_id not in refused
            }
            for channel in set(self._bridges) - set(relayed):
                self._close_bridge(channel)
            for channel, hub in relayed.items():
                await self._open_bridge(channel, hub)
            await self._initiate_bridged(list(relayed))
            if self._on_synced is not None:
                self._on_synced()
        elif isinstance(message, control.PeerAdd):
            peer = _desired(message)
            accepted = await asyncio.to_thread(self._peers.add, peer)
            if accepted and peer.relayed:
                await self._open_bridge(peer.channel, message.relay_hub)
                await self._initiate_bridged([peer.channel])
        elif isinstance(message, control.PeerRemove):
            await asyncio.to_thread(self._peers.remove, message.public_key, message.session_id)
            self._close_bridge(message.channel)
        elif isinstance(message, control.Punch):
            if self._on_punch is None:
                self.counters["punch_unsupported"] += 1
            else:
                self._on_punch(message)
        else:
            self.counters["control_unexpected"] += 1

    async def _report(self) -> None:
        last = time.monotonic()
        while True:
            # Short naps: the interval may change (hello) while we wait.
            await asyncio.sleep(0.5)
            if time.monotonic() - last < self.stats_interval_s or not self._link.connected:
                continue
            last = time.monotonic()
            try:
                rows = await asyncio.to_thread(self._peer_rows)
            except Exception as exc:
                log.warning("cannot read peer counters", extra={"why": str(exc)})
                continue
            stats = control.PeerStats(
                peers=[control.PeerStat(**p) for p in peer_stats_with_endpoints(rows)]
            )
            self._link.send_text(stats.model_dump(mode="json"))
