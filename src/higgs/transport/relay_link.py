"""A node's or client's WebSocket link to the relay, kept up until closed.

Bytes in, bytes out: the link sends DATA frames for a channel and text control messages, and
hands received frames to callbacks. It batches what is queued (flushed on the next event-loop
turn, never waiting to fill a batch), reconnects with jittered backoff (kept short
right after a link was lost: a server restart costs seconds), and stops for good on
the close codes that say retrying cannot help (4001 unauthorized, 4002 session closed, 4004 bad
version, 4003 replaced by another instance; HTTP 401 on the upgrade counts as 4001), except
that a 401 within ``admission_wait_s`` of :meth:`RelayLink.start` is retried: a hub that reads
its admissions from the database (a relay host's, docs/scaleout.md) may not know a credential
issued a moment ago yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from picows.url import WSParsedURL

from higgs.common.backoff import Backoff
from higgs.common.tls import client_context
from higgs.protocol.relay import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    CloseCode,
    FrameError,
    decode,
    encode_batches,
)

__all__ = ["FINAL_CLOSE_CODES", "LinkClosed", "RelayLink"]

log = logging.getLogger(__name__)

# 4003: another instance with the same credential took over; reconnecting would only make
# the two take turns replacing each other.
FINAL_CLOSE_CODES = frozenset(
    {CloseCode.UNAUTHORIZED, CloseCode.SESSION_CLOSED, CloseCode.REPLACED, CloseCode.BAD_VERSION}
)
RECENT_MAX_S = 1.0  # the reconnect ceiling right after a link was lost
_MAX_PENDING = 2048  # datagrams waiting for the next flush; beyond, the oldest are dropped

DataCallback = Callable[[int, list[memoryview]], None]
TextCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class LinkClosed:
    """Why the link stopped for good (``code`` is a relay close code or None for close())."""

    code: int | None
    reason: str


class _Listener(WSListener):
    def __init__(self, link: RelayLink) -> None:
        self.link = link
        self.frag: bytearray | None = None
        self.frag_type: WSMsgType | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.link._on_connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        try:
            if kind == WSMsgType.BINARY and frame.fin and self.frag is None:
                self.link._on_binary(frame.get_payload_as_memoryview())
            elif kind == WSMsgType.TEXT and frame.fin and self.frag is None:
                self.link._on_text(frame.get_payload_as_bytes())
            elif kind == WSMsgType.CLOSE:
                self.link._close_code = int(cast(Any, frame.get_close_code()))
                self.link._close_reason = frame.get_close_reason()
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            elif kind in (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION):
                self._fragment(frame)
        except Exception:
            log.exception("relay link: error handling a frame")

    def _fragment(self, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.CONTINUATION:
            self.frag, self.frag_type = bytearray(), frame.msg_type
        elif self.frag is None:
            return
        self.frag += frame.get_payload_as_memoryview()
        if len(self.frag) > 2 * 1024 * 1024:
            self.frag = None
            return
        if frame.fin:
            message, self.frag = bytes(self.frag), None
            if self.frag_type == WSMsgType.BINARY:
                self.link._on_binary(memoryview(message))
            else:
                self.link._on_text(message)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.link._on_disconnected()

    def pause_writing(self) -> None:
        self.link._paused = True

    def resume_writing(self) -> None:
        self.link._paused = False
        self.link._schedule_flush()


class RelayLink:
    """One relay WebSocket (``/v1/relay/node`` or ``/v1/relay/session``).

    ``on_data(channel, datagrams)``: the datagrams are views valid only during the call.
    ``on_text(message)``: a control message, already parsed from JSON.
    ``on_state(connected)``: called on every connect and disconnect.
    ``fwmark``: SO_MARK for the TCP socket (so a full tunnel can route it around itself);
    ``sock_setup(sock)``: any other socket option, applied before connect.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        on_data: DataCallback,
        on_text: TextCallback | None = None,
        on_state: Callable[[bool], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | None = None,
        fwmark: int | None = None,
        sock_setup: Callable[[socket.socket], None] | None = None,
        backoff: Backoff | None = None,
        ping_interval_s: float = 15.0,
        dead_after_s: float = 45.0,
        connect_timeout_s: float = 10.0,
        admission_wait_s: float = 0.0,
    ) -> None:
        self.url = url
        self._admission_wait_s = admission_wait_s
        self._started_at = 0.0
        self._token = token
        self._on_data = on_data
        self._on_text_cb = on_text
        self._on_state = on_state
        if ssl_context is None and (ca_file is not None or url.startswith("wss:")):
            ssl_context = client_context(ca_file)
        self._ssl = ssl_context
        self._fwmark = fwmark
        self._sock_setup = sock_setup
        # At once (jittered) after a drop, and at most every RECENT_MAX_S while the server
        # was reachable in the last minute: a restarted server has its relay paths back
        # within seconds (issue 17); beyond that minute, the usual growth to 30 s.
        self._backoff = backoff or Backoff(
            initial=0.25, maximum=30.0, recent_maximum=RECENT_MAX_S, recent_window_s=60.0
        )
        self._ping_interval_s = ping_interval_s
        self._dead_after_s = dead_after_s
        self._connect_timeout_s = connect_timeout_s
        self._transport: WSTransport | None = None
        self._disconnected: asyncio.Event = asyncio.Event()
        self._paused = False
        self._pending: dict[int, list[bytes]] = {}
        self._pending_count = 0
        self._flush_scheduled = False
        self._close_code: int | None = None
        self._close_reason = ""
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.result: LinkClosed | None = None
        self.dropped = 0
        self.malformed = 0

    # -- public ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def start(self) -> None:
        """Starts connecting (and reconnecting) in the background."""
        if self._runner is None:
            loop = asyncio.get_running_loop()
            self._started_at = loop.time()
            self._runner = loop.create_task(self._run())

    async def wait_connected(self) -> None:
        """Waits until the link is up (wrap it in ``asyncio.timeout``)."""
        await self._connected.wait()

    async def wait_closed(self) -> LinkClosed:
        """Waits until the link stopped for good; says why."""
        assert self._runner is not None, "start() first"
        if not self._runner.done():
            await asyncio.wait({self._runner})  # never raises the runner's cancellation
        return self.result or LinkClosed(None, "closed")

    async def close(self) -> None:
        self._stopping = True
        if self._transport is not None:
            self._flush()
            self._transport.send_close(cast(Any, int(CloseCode.NORMAL)))
            self._transport.disconnect()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self.result is None:
            self.result = LinkClosed(None, "closed")

    def send_datagrams(self, channel: int, datagrams: Iterable[bytes | memoryview]) -> None:
        """Queues datagrams; everything queued in this loop turn goes out batched."""
        if self._transport is None:
            self.dropped += sum(1 for _ in datagrams)
            return
        queue = self._pending.setdefault(channel, [])
        for datagram in datagrams:
            queue.append(bytes(datagram))
            self._pending_count += 1
        if self._pending_count > _MAX_PENDING:
            self._trim()
        self._schedule_flush()

    def send_text(self, message: dict[str, Any]) -> bool:
        if self._transport is None:
            return False
        self._flush()
        self._transport.send(WSMsgType.TEXT, json.dumps(message, separators=(",", ":")).encode())
        return True

    # -- internals ---------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._pending:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        if transport is None or self._paused or not self._pending:
            return
        pending, self._pending, self._pending_count = self._pending, {}, 0
        for channel, datagrams in pending.items():
            for frame in encode_batches(channel, datagrams):
                transport.send(WSMsgType.BINARY, frame)

    def _trim(self) -> None:
        # Drop-oldest across channels: WireGuard copes with loss, not with stale bursts.
        excess = self._pending_count - _MAX_PENDING
        for queue in self._pending.values():
            cut = min(excess, len(queue))
            del queue[:cut]
            excess -= cut
            self.dropped += cut
            self._pending_count -= cut
            if excess <= 0:
                break

    def _on_binary(self, payload: memoryview) -> None:
        try:
            frame = decode(payload)
        except FrameError as exc:
            self.malformed += 1
            log.debug("relay link: dropped a frame: %s", exc)
            return
        self._on_data(frame.channel, frame.datagrams)

    def _on_text(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.malformed += 1
            return
        if not isinstance(message, dict):  # JSON, but no control message: count it too
            self.malformed += 1
            return
        if self._on_text_cb is not None:
            self._on_text_cb(message)

    def _on_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._paused = False

    def _on_disconnected(self) -> None:
        self._transport = None
        self._pending.clear()
        self._pending_count = 0
        self._disconnected.set()

    def _socket_factory(self, parsed: WSParsedURL) -> socket.socket | None:
        if self._fwmark is None and self._sock_setup is None:
            return None
        infos = socket.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, _ = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            if self._fwmark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self._fwmark)
            if self._sock_setup is not None:
                self._sock_setup(sock)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _connect_once(self) -> None:
        """One connection, until it drops; raises on a failed connect."""
        self._close_code, self._close_reason = None, ""
        self._disconnected = asyncio.Event()
        headers = {
            "Authorization": f"Bearer {self._token}",
            VERSION_HEADER: str(PROTOCOL_VERSION),
        }
        transport, _ = await ws_connect(
            lambda: _Listener(self),
            self.url,
            ssl_context=self._ssl,
            websocket_handshake_timeout=self._connect_timeout_s,
            logger_name="higgs.relay_link",
            enable_auto_ping=True,
            auto_ping_idle_timeout=self._ping_interval_s,
            # picows wants reply <= idle; the server pings every interval anyway.
            auto_ping_reply_timeout=min(
                self._ping_interval_s, max(self._dead_after_s - self._ping_interval_s, 0.1)
            ),
            max_frame_size=2 * 1024 * 1024,
            extra_headers=headers,
            max_redirects=0,
            read_buffer_init_size=4096,
            socket_factory=self._socket_factory,
        )
        transport.underlying_transport.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)
        self._connected.set()
        loop = asyncio.get_running_loop()
        up_since = loop.time()
        if self._on_state is not None:
            self._on_state(True)
        try:
            await self._disconnected.wait()
        finally:
            self._connected.clear()
            # Only a link that stayed up a while resets the backoff, so a server that accepts
            # and drops at once is not hammered.
            if loop.time() - up_since > 10.0:
                self._backoff.reset()
            if self._on_state is not None:
                self._on_state(False)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status = getattr(getattr(exc, "response", None), "status", None)
                waited = asyncio.get_running_loop().time() - self._started_at
                if status == 401 and waited < self._admission_wait_s:
                    log.info("relay link: credential not admitted yet (HTTP 401); retrying")
                elif status == 401:
                    self.result = LinkClosed(int(CloseCode.UNAUTHORIZED), "HTTP 401 on upgrade")
                    log.warning("relay link: credential refused (HTTP 401); not retrying")
                    return
                else:
                    log.info("relay link: connect failed: %s", exc)
            else:
                code = self._close_code
                if code is not None and code in FINAL_CLOSE_CODES:
                    self.result = LinkClosed(code, self._close_reason)
                    log.warning(
                        "relay link: closed with %s (%s); not retrying", code, self._close_reason
                    )
                    return
                log.info("relay link: disconnected (code %s); reconnecting", code)
            if self._stopping:
                break
            await asyncio.sleep(self._backoff.next_delay())
        if self.result is None:
            self.result = LinkClosed(None, "closed")
