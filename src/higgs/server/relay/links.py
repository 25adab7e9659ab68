"""One WebSocket link of the relay: the per-connection data path.

Hot path, in order of cost: picows parses the frame in C and calls the link's ``on_ws_frame``
(:class:`SessionLink` and :class:`NodeLink` each inline their whole fast path: one Python call
per frame, measured to matter); the frame is validated, authorized by channel, counted, and
queued on the destination link. Delivery is adaptive (relay-bench.md): a frame that is alone in
its read buffer goes out through picows' C ``send``; frames that arrive together are collected,
already framed, in the destination's pending list, joined once and written with one ``write()``
when the source's read buffer is exhausted (``frame.last_in_buffer``). Measured alternatives:
growing one ``bytearray`` re-copied it on resizes (a fifth of the CPU at 1420-byte datagrams: a
loaded link's reads reach megabytes); ``writelines`` of the parts and joining in 64 KiB pieces
both cost more per datagram than one join. Payloads are copied out of picows' read buffer
(``bytes``), never kept as views: a frame may wait past the callback that produced it (a
trailing PING, a protocol error ending a read). When a destination's transport is over its
high-water mark, frames wait in a bounded queue that drops its oldest frame when full
(``queue_full``); WireGuard tolerates loss like UDP. A node link is never paused for a slow
client (it carries all the node's sessions); a full node link pauses reading its own client
links instead (see :meth:`NodeLink.pause_writing`).
"""

from __future__ import annotations

import json
import logging
import struct
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, cast

from picows import WSFrame, WSListener, WSMsgType, WSTransport

from higgs.protocol.control import MAX_CONTROL_MESSAGE_SIZE
from higgs.protocol.relay import (
    FRAME_DATA,
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    RECORD_HEADER_SIZE,
    CloseCode,
    DropReason,
    FrameError,
    validate,
)
from higgs.server.relay.metrics import RelayCounters
from higgs.server.relay.tables import NodeEntry, SessionEntry

if TYPE_CHECKING:
    from asyncio import Transport

__all__ = ["LinkHost", "NodeLink", "SessionLink"]

log = logging.getLogger(__name__)

_BINARY = WSMsgType.BINARY
_TEXT = WSMsgType.TEXT
_CONT = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_FIN_BINARY = 0x82
_unpack_head = struct.Struct(">BIH").unpack_from  # type, channel, first record's length
_ONE_RECORD_OVERHEAD = HEADER_SIZE + RECORD_HEADER_SIZE
_ONE_RECORD_MIN = _ONE_RECORD_OVERHEAD
_join = b"".join
_HDR_SMALL = struct.Struct(">BB")
_HDR_MEDIUM = struct.Struct(">BBH")
_MALFORMED = DropReason.MALFORMED
_WRONG_CHANNEL = DropReason.WRONG_CHANNEL
_NO_PEER = DropReason.NO_PEER
_SESSION_CLOSED = DropReason.SESSION_CLOSED


def _make_header(n: int) -> bytes:
    return _HDR_SMALL.pack(_FIN_BINARY, n) if n < 126 else _HDR_MEDIUM.pack(_FIN_BINARY, 126, n)


# Server-to-peer (unmasked) binary frame headers by payload size, built on first use: a list
# index is several times cheaper than struct.pack on the per-frame path. Relay frames never
# exceed 65,535 bytes (the parser checked), so the index is always in range.
_HEADERS: list[bytes | None] = [None] * (MAX_FRAME_SIZE + 1)


def _header(n: int) -> bytes:
    head = _HEADERS[n]
    if head is None:
        head = _HEADERS[n] = _make_header(n)
    return head


def _framed(payload: bytes) -> bytes:
    """A server-to-peer binary WebSocket frame around ``payload``."""
    return _header(len(payload)) + payload


class LinkHost(Protocol):
    """What a link needs of the hub that accepted it."""

    write_high: int  # the transport's write buffer limits (when the peer counts as full)
    write_low: int
    queue_limit: int  # bytes waiting for a full peer before the oldest frame is dropped
    counters: RelayCounters
    # Links with frames pending, flushed when the source's read buffer is exhausted.
    dirty: list[_Link]

    def mark_dirty(self, link: _Link) -> None: ...

    def flush(self) -> None: ...

    def attach_node_link(self, link: NodeLink) -> None: ...

    def detach_node_link(self, link: NodeLink) -> None: ...

    def attach_session_link(self, link: SessionLink) -> None: ...

    def detach_session_link(self, link: SessionLink) -> None: ...

    def node_text(self, link: NodeLink, data: bytes) -> None: ...

    def bridge_up(self, session: SessionEntry, payload: bytes, count: int, last: bool) -> bool:
        """Sends a client's frame to the session's UDP relay port; False: use the node link."""
        ...

    def session_text(self, link: SessionLink, data: bytes) -> None: ...


class _Link(WSListener):
    __slots__ = (
        "alive",
        "closed",
        "frag",
        "frag_over",
        "frag_type",
        "hub",
        "paused",
        "pending",
        "queue",
        "queued_bytes",
        "raw",
        "refused",
        "silent_s",
        "transport",
    )
    kind = "link"

    def __init__(self, hub: LinkHost, refused: CloseCode | None) -> None:
        self.hub = hub
        self.refused = refused
        self.transport: WSTransport | None = None
        self.raw: Transport | None = None
        self.alive = True
        self.silent_s = 0.0
        self.closed = False
        self.paused = False
        self.pending: list[bytes] | None = None
        self.queue: deque[bytes] | None = None
        self.queued_bytes = 0
        self.frag: bytearray | None = None
        self.frag_over = False
        self.frag_type: WSMsgType | None = None

    # -- picows callbacks ------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.raw = transport.underlying_transport
        self.raw.set_write_buffer_limits(high=self.hub.write_high, low=self.hub.write_low)
        if self.refused is not None:
            self.close(self.refused, "unsupported protocol version")
            return
        self.attach()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.pending = None
        self.queue = None
        try:
            if self.refused is None:
                self.detach()
        except Exception:
            log.exception("relay: error while detaching a %s link", self.kind)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # The subclasses override this with their inlined fast path; this is the general one.
        self.alive = True
        try:
            self._slow_frame(transport, frame)
        except Exception:
            self._bug()
        if frame.last_in_buffer and self.hub.dirty:
            self.hub.flush()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        queue = self.queue
        if queue and not self.closed and self.raw is not None:
            data = b"".join(queue)
            queue.clear()
            self.queued_bytes = 0
            self.raw.write(data)

    # -- delivery to this link ---------------------------------------------------------------

    def deliver(self, payload: bytes, last: bool) -> None:
        """Sends one relay frame to this link's peer (coalesced, or queued when paused).

        The fast paths append to ``pending`` themselves when it exists; it exists only while
        the link is not paused (a pause happens inside a write, and every write flushes
        ``pending`` first)."""
        if self.paused:
            self._enqueue(_framed(payload))
            return
        pending = self.pending
        if pending is None:
            if last:
                self.transport.send(_BINARY, payload)  # type: ignore[union-attr]
                return
            pending = self.pending = []
            self.hub.mark_dirty(self)
        pending.append(_HEADERS[len(payload)] or _header(len(payload)))
        pending.append(payload)

    def flush_pending(self) -> None:
        parts = self.pending
        self.pending = None
        if parts and not self.closed and self.raw is not None:
            self.raw.write(_join(parts))

    def _enqueue(self, framed: bytes) -> None:
        queue = self.queue
        if queue is None:
            queue = self.queue = deque()
        queue.append(framed)
        self.queued_bytes += len(framed)
        limit = self.hub.queue_limit
        drops = self.hub.counters.drops
        while self.queued_bytes > limit and len(queue) > 1:
            self.queued_bytes -= len(queue.popleft())
            drops[DropReason.QUEUE_FULL] += 1

    def send_text(self, message: dict[str, Any]) -> bool:
        if self.closed or self.transport is None:
            return False
        self.flush_pending()
        self.transport.send(_TEXT, json.dumps(message, separators=(",", ":")).encode())
        return True

    def close(self, code: CloseCode, reason: str = "") -> None:
        if self.closed or self.transport is None:
            return
        self.flush_pending()
        self.closed = True
        # picows accepts any int here although its stub names its enum.
        self.transport.send_close(cast(Any, int(code)), reason.encode()[:120])
        self.transport.disconnect()

    # -- everything but a one-datagram DATA frame ---------------------------------------------

    def _bug(self) -> None:
        # Never let one bad frame (or a bug) take the link or other links down.
        self.hub.counters.drops[_MALFORMED] += 1
        log.exception("relay: unexpected error handling a frame on a %s link", self.kind)

    def _slow_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is _BINARY and frame.fin and self.frag is None:
            self._forward_checked(frame.get_payload_as_bytes(), frame.last_in_buffer)
        else:
            self._other_frame(transport, frame)

    def _forward_checked(self, payload: bytes, last: bool) -> None:
        """Any binary message: full validation, then the same rules as the fast path."""
        try:
            channel, count = validate(payload)
        except FrameError as exc:
            self.hub.counters.drops[exc.reason] += 1
            return
        self._route(payload, channel, count, last)

    def _other_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == _CLOSE:
            if not self.closed:
                self.flush_pending()
                self.closed = True
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            return
        if kind in (_BINARY, _TEXT, _CONT):
            message = self._reassemble(frame)
            if message is None:
                return
            if self.frag_type == _BINARY:
                self._forward_checked(bytes(message), False)
            else:
                self.on_text(bytes(message))
            self.frag_type = None
            return
        # PING is answered by picows; a PONG only proves liveness, already noted.

    def _reassemble(self, frame: WSFrame) -> bytearray | None:
        """Collects a fragmented message (bounded); returns it when complete and valid."""
        kind = frame.msg_type
        if kind != _CONT:
            if self.frag is not None:  # a new message before the last one finished
                self.hub.counters.drops[_MALFORMED] += 1
            self.frag = bytearray()
            self.frag_over = False
            self.frag_type = kind
        elif self.frag is None:
            self.hub.counters.drops[_MALFORMED] += 1  # continuation of nothing
            return None
        frag = self.frag
        limit = MAX_FRAME_SIZE if self.frag_type == _BINARY else MAX_CONTROL_MESSAGE_SIZE
        if self.frag_over or len(frag) + frame.payload_size > limit:
            # Keep nothing more, but remember so the whole message is dropped once, at its end.
            self.frag_over = True
            frag.clear()
        else:
            frag += frame.get_payload_as_memoryview()
        if not frame.fin:
            return None
        message, self.frag = frag, None
        if self.frag_over:
            self.hub.counters.drops[_MALFORMED] += 1
            self.frag_type = None
            return None
        return message

    # -- per kind ---------------------------------------------------------------------------

    def attach(self) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        raise NotImplementedError

    def _route(self, payload: bytes, channel: int, count: int, last: bool) -> None:
        raise NotImplementedError

    def on_text(self, data: bytes) -> None:
        raise NotImplementedError


class NodeLink(_Link):
    """``/v1/relay/node``: a node's control messages and the data of all its sessions."""

    __slots__ = ("node",)
    kind = "node"

    def __init__(self, hub: LinkHost, node: NodeEntry, refused: CloseCode | None) -> None:
        super().__init__(hub, refused)
        self.node = node

    def attach(self) -> None:
        self.hub.attach_node_link(self)

    def detach(self) -> None:
        self.hub.detach_node_link(self)

    def on_text(self, data: bytes) -> None:
        self.hub.node_text(self, data)

    # Upstream backpressure: when the node's socket is full, stop reading its clients' links.
    # Every client link of a node feeds only this one destination, so pausing them is fair and
    # pushes the loss to the clients' own bounded queues instead of the relay's memory. The
    # other direction is never paused: the node link carries every session, and one slow
    # client must not stall the rest (those frames are dropped oldest-first instead).

    def pause_writing(self) -> None:
        self.paused = True
        for session in self.node.channels.values():
            link = session.client_link
            if link is not None and link.raw is not None and not link.closed:
                link.raw.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if not self.paused:
            self.release_clients()

    def release_clients(self) -> None:
        """Lets the node's client links be read again (on resume, or when this link goes)."""
        for session in self.node.channels.values():
            link = session.client_link
            if link is not None and link.raw is not None and not link.closed:
                link.raw.resume_reading()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # Hot path, deliberately inlined (each Python call costs about as much as a check): a
        # one-datagram DATA frame is recognised from its content (type, channel, first record's
        # length exactly filling the frame); anything else takes the general path, which checks
        # the WebSocket opcode. The opcode is not read here: on Python 3.11 ``frame.msg_type``
        # builds an enum member through ``EnumType.__getattr__``, which measured 18% of the
        # per-frame Python cost. The only frames this lets through that a strict check would
        # not are a TEXT, PONG or orphan CONTINUATION message that is byte for byte a valid
        # DATA frame for the link's own channel: forwarding it is what the peer could do with a
        # binary message anyway (authorization and validation are unchanged). PING never
        # reaches us (picows answers it); a CLOSE payload never looks like DATA (picows refuses
        # close codes 256-511).
        self.alive = True
        last = frame.last_in_buffer
        try:
            if frame.fin and self.frag is None:
                payload = frame.get_payload_as_bytes()
                size = len(payload)
                if _ONE_RECORD_MIN < size <= MAX_FRAME_SIZE:
                    kind, channel, first = _unpack_head(payload)
                    if kind == FRAME_DATA and first == size - _ONE_RECORD_OVERHEAD:
                        session = self.node.channels.get(channel)
                        dest = None if session is None else session.client_link
                        if dest is not None and not dest.closed:
                            session.down_datagrams += 1  # type: ignore[union-attr]
                            session.down_bytes += size  # type: ignore[union-attr]
                            pending = dest.pending
                            if pending is not None:
                                pending.append(_HEADERS[size] or _header(size))
                                pending.append(payload)
                            else:
                                dest.deliver(payload, last)
                        else:
                            self._route(payload, channel, 1, last)  # counts the drop
                    else:
                        self._slow_frame(transport, frame)
                else:
                    self._slow_frame(transport, frame)
            else:
                self._other_frame(transport, frame)
        except Exception:
            self._bug()
        if last and self.hub.dirty:
            self.hub.flush()

    def _route(self, payload: bytes, channel: int, count: int, last: bool) -> None:
        node = self.node
        session = node.channels.get(channel)
        if session is None:
            reason = _SESSION_CLOSED if channel in node.closed_channels else _WRONG_CHANNEL
            self.hub.counters.drops[reason] += 1
            return
        dest = session.client_link
        if dest is None or dest.closed:
            self.hub.counters.drops[_NO_PEER] += 1
            return
        session.down_datagrams += count
        session.down_bytes += len(payload)
        dest.deliver(payload, last)


class SessionLink(_Link):
    """``/v1/relay/session``: one client's session."""

    __slots__ = ("session",)
    kind = "session"

    def __init__(self, hub: LinkHost, session: SessionEntry, refused: CloseCode | None) -> None:
        super().__init__(hub, refused)
        self.session = session

    def attach(self) -> None:
        self.hub.attach_session_link(self)

    def detach(self) -> None:
        self.hub.detach_session_link(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # Hot path, inlined like NodeLink's; every frame of this link goes to one node link.
        self.alive = True
        last = frame.last_in_buffer
        try:
            if frame.fin and self.frag is None:
                payload = frame.get_payload_as_bytes()
                size = len(payload)
                session = self.session
                if _ONE_RECORD_MIN < size <= MAX_FRAME_SIZE:
                    kind, channel, first = _unpack_head(payload)
                else:
                    kind = channel = first = 0  # not DATA: the general path
                if (
                    kind == FRAME_DATA
                    and first == size - _ONE_RECORD_OVERHEAD
                    and channel == session.channel
                ):
                    dest = session.node.link
                    if (
                        dest is not None
                        and not dest.closed
                        and not session.closed
                        and session.udp_endpoint is None
                    ):
                        session.up_datagrams += 1
                        session.up_bytes += size
                        pending = dest.pending
                        if pending is not None:
                            pending.append(_HEADERS[size] or _header(size))
                            pending.append(payload)
                        else:
                            dest.deliver(payload, last)
                    else:
                        self._route(payload, session.channel, 1, last)  # counts the drop
                else:
                    self._slow_frame(transport, frame)
            else:
                self._other_frame(transport, frame)
        except Exception:
            self._bug()
        if last and self.hub.dirty:
            self.hub.flush()

    def _route(self, payload: bytes, channel: int, count: int, last: bool) -> None:
        session = self.session
        if channel != session.channel or session.closed:
            reason = _SESSION_CLOSED if session.closed else _WRONG_CHANNEL
            self.hub.counters.drops[reason] += 1
            return
        if session.udp_endpoint is not None and self.hub.bridge_up(session, payload, count, last):
            return
        dest = session.node.link
        if dest is None or dest.closed:
            self.hub.counters.drops[_NO_PEER] += 1
            return
        session.up_datagrams += count
        session.up_bytes += len(payload)
        dest.deliver(payload, last)

    def on_text(self, data: bytes) -> None:
        self.hub.session_text(self, data)
