"""A client's session link spliced to another instance's hub (scale-out, docs/scaleout.md).

The route answer sends a WebSocket-relayed client to the hub that holds its node's link; a
client that reaches another instance anyway (it dialled the balancer, or the node's link moved
since the answer) is not refused: this hub opens the same session link, with the client's own
token, to the holder's hub and copies every frame both ways, unchanged. The holder sees an
ordinary session link and does all the relaying work (channels, counters, closes); this side
only carries bytes. A spliced link is marked (:data:`SPLICED_HEADER`) so that the holder never
splices it again, even when it has lost the node meanwhile: two hubs cannot bounce a link.

Not the hot path of a deployment (the answer normally points at the holder): one Python call
per frame each way, no write coalescing, frames arriving before the far side is up dropped
(WireGuard retransmits its handshake).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from higgs.protocol.relay import PROTOCOL_VERSION, VERSION_HEADER, CloseCode

__all__ = ["SPLICED_HEADER", "SpliceLink"]

log = logging.getLogger(__name__)

SPLICED_HEADER = "X-Higgs-Spliced"
_CONNECT_TIMEOUT_S = 5.0
_COPIED = (WSMsgType.BINARY, WSMsgType.TEXT)


class _Far(WSListener):
    """The holder's side: its frames go to the client."""

    def __init__(self, splice: SpliceLink) -> None:
        self.splice = splice

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind in _COPIED and frame.fin:
            self.splice.to_client(kind, frame.get_payload_as_bytes())
        elif kind == WSMsgType.CLOSE:
            self.splice.far_closed(
                int(cast(Any, frame.get_close_code())), frame.get_close_message()
            )
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.splice.far_closed(int(CloseCode.GOING_AWAY), b"the holder's hub went away")


class SpliceLink(WSListener):
    """The client's side of a splice (a picows listener of this hub's server)."""

    def __init__(self, url: str, token: str, counters: dict[str, int]) -> None:
        self.url = url
        self._token = token
        self.counters = counters  # "spliced", "dropped" (the hub's splices: tests read them)
        self.client: WSTransport | None = None
        self.far: WSTransport | None = None
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    # -- the client's side -------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.client = transport
        self.counters["spliced"] = self.counters.get("spliced", 0) + 1
        self._task = asyncio.get_running_loop().create_task(self._dial())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind in _COPIED and frame.fin:
            if self.far is not None:
                self.far.send(kind, frame.get_payload_as_bytes())
            else:
                self.counters["dropped"] = self.counters.get("dropped", 0) + 1
        elif kind == WSMsgType.CLOSE:
            self._close_far(int(cast(Any, frame.get_close_code())), frame.get_close_message())
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif kind == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self._close_far(int(CloseCode.NORMAL), b"client gone")
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # -- the holder's side -------------------------------------------------------------------

    async def _dial(self) -> None:
        headers = {
            "Authorization": f"Bearer {self._token}",
            VERSION_HEADER: str(PROTOCOL_VERSION),
            SPLICED_HEADER: "1",
        }
        try:
            far, _ = await ws_connect(
                lambda: _Far(self),
                self.url,
                websocket_handshake_timeout=_CONNECT_TIMEOUT_S,
                logger_name="higgs.relay.splice",
                extra_headers=headers,
            )
        except Exception as exc:  # refused, unreachable, bad answer: the client hears it
            log.info("relay: splice to the holder failed: %s", exc)
            self.far_closed(int(CloseCode.GOING_AWAY), b"the holder's hub is unreachable")
            return
        if self.closed:
            far.send_close(cast(Any, int(CloseCode.NORMAL)))
            far.disconnect()
            return
        self.far = far

    def to_client(self, kind: WSMsgType, payload: bytes) -> None:
        if self.client is not None and not self.closed:
            self.client.send(kind, payload)

    def far_closed(self, code: int, message: bytes | None) -> None:
        """The holder closed (or went away): the client hears the holder's code and reason,
        so that 4002 (session closed) stays final for it."""
        self.far = None
        if self.client is not None and not self.closed:
            self.closed = True
            self.client.send_close(cast(Any, code), message)
            self.client.disconnect()

    def _close_far(self, code: int, message: bytes | None) -> None:
        far, self.far = self.far, None
        if far is not None:
            far.send_close(cast(Any, code), message)
            far.disconnect()
