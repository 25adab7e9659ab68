"""Relay mode's data path on the client: WireGuard ⇄ local UDP bridge ⇄ session WebSocket.

WireGuard's peer endpoint is the bridge's ``127.0.0.1`` port. Everything WireGuard sends there
goes out as DATA frames on the session's channel; every frame from the relay goes back to
WireGuard's own port. The link reconnects with backoff to the same session by itself; it stops
for good only on a close that retrying cannot fix (session closed, credential refused), which
:attr:`BridgedRelayPath.closed_reason` then reports so the daemon can take a new route.

The link's TCP socket carries the tunnel's fwmark, so in a full tunnel it goes around the
tunnel (like WireGuard's own socket) instead of into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from higgs.client.settings import ClientSettings
from higgs.protocol.api import RouteResponse
from higgs.protocol.relay import CloseCode
from higgs.transport.relay_link import RelayLink
from higgs.transport.udp_bridge import UdpBridge

__all__ = ["BridgedRelayPath"]

log = logging.getLogger(__name__)

_REASONS = {
    int(CloseCode.UNAUTHORIZED): "relay token refused",
    int(CloseCode.SESSION_CLOSED): "session closed by the server",
    int(CloseCode.BAD_VERSION): "relay protocol version not supported",
    int(CloseCode.REPLACED): "another connection took this session over",
    int(CloseCode.NODE_OFFLINE): "node offline",
}
# A relay host's hub admits a new session at its next database read (0.9 s): a 401 just after
# the route is retried this long before the token counts as refused.
ADMISSION_WAIT_S = 3.0
# 4009 means the node is gone for good (protocol.md §3.4): fail over at once.
_NODE_OFFLINE_LIMIT = 1


class BridgedRelayPath:
    def __init__(
        self,
        route: RouteResponse,
        settings: ClientSettings,
        *,
        wg_port: int | None,
        fwmark: int | None,
    ) -> None:
        if route.relay is None:
            raise ValueError("route has no relay path")
        self._relay = route.relay
        self._settings = settings
        self._wg_port = wg_port
        self._fwmark = fwmark
        self._bridge: UdpBridge | None = None
        self._link: RelayLink | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closed_reason: str | None = None
        self._ups = 0
        self._node_offline_streak = 0

    @property
    def local_endpoint(self) -> str:
        assert self._bridge is not None, "start() first"
        host, port = self._bridge.local_address
        return f"{host}:{port}"

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    @property
    def reconnects(self) -> int:
        return max(0, self._ups - 1)

    async def start(self) -> None:
        channel = self._relay.channel
        peer = ("127.0.0.1", self._wg_port) if self._wg_port else None

        def from_wireguard(datagrams: list[bytes]) -> None:
            if self._link is not None:
                self._link.send_datagrams(channel, datagrams)

        def from_relay(frame_channel: int, datagrams: list[memoryview]) -> None:
            if frame_channel == channel and self._bridge is not None:
                self._bridge.send(datagrams)

        self._bridge = await UdpBridge.open(from_wireguard, peer=peer)
        self._link = RelayLink(
            self._relay.url,
            self._relay.token,
            on_data=from_relay,
            on_text=self._on_text,
            on_state=self._on_state,
            ca_file=str(self._settings.ca_file) if self._settings.ca_file else None,
            fwmark=self._fwmark,
            admission_wait_s=ADMISSION_WAIT_S,
        )
        self._link.start()
        self._watch = asyncio.get_running_loop().create_task(self._wait_closed())

    def _on_state(self, up: bool) -> None:
        if up:
            self._ups += 1
            log.info("relay link up (session channel %d)", self._relay.channel)
            return
        code = getattr(self._link, "_close_code", None)
        log.info("relay link down (close code %s)", code)
        if code == int(CloseCode.NODE_OFFLINE):
            self._node_offline_streak += 1
            if self._node_offline_streak >= _NODE_OFFLINE_LIMIT and self._closed_reason is None:
                self._closed_reason = _REASONS[code]
        else:
            self._node_offline_streak = 0

    def _on_text(self, message: dict[str, object]) -> None:
        kind = message.get("type")
        if kind == "session_closed":
            log.warning("relay: session closed (%s)", message.get("reason"))
        elif kind != "hello":
            log.debug("relay: ignored control message %r", kind)

    async def _wait_closed(self) -> None:
        assert self._link is not None
        result = await self._link.wait_closed()
        if self._closed_reason is None:
            reason = _REASONS.get(result.code or -1, result.reason or "closed")
            self._closed_reason = f"{reason} ({result.code})" if result.code else reason

    async def close(self) -> None:
        if self._closed_reason is None:
            self._closed_reason = "closed"
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._link is not None:
            await self._link.close()
        if self._bridge is not None:
            self._bridge.close()
