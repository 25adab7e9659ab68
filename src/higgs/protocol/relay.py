"""Relay frames: how WireGuard datagrams travel over the relay's WebSocket links.

Purpose
    A client and a node that cannot reach each other over UDP exchange their WireGuard
    datagrams through bosonserver's relay. WireGuard is end to end, so the relay only ever sees
    ciphertext; it forwards it without looking inside.

Flow
    A node keeps one WebSocket to ``/v1/relay/node`` (``Authorization: Bearer hgn_…``); it
    carries the node's control messages (text frames, see :mod:`higgs.protocol.control`) and the
    data of all its relayed sessions (binary frames). A client opens one WebSocket per session
    to ``/v1/relay/session`` (``Authorization: Bearer hgr_…``). Both send the header
    ``Higgs-Relay-Version: 1``. Every binary WebSocket message is exactly one frame::

        0        1                 5
        +--------+-----------------+------------------------------------------+
        | type   | channel (u32)   | body                                     |
        +--------+-----------------+------------------------------------------+

    All integers are big-endian. The channel names one session: the server assigns it, the
    client learns it from its route, the node from ``peer_add``. On a session link the server
    accepts a frame only with that session's channel; on a node link only with the channel of
    one of that node's open sessions. It forwards accepted frames *unchanged* (same bytes) to
    the other end of the same session, and nothing else, ever.

Frame types
    ``FRAME_DATA`` (0x01): the body is one or more records ``len (u16) ‖ datagram``, with
    ``len >= 1``; the records must exactly fill the frame. A sender packs the datagrams that
    are already queued when it writes (at most :data:`MAX_BATCH_RECORDS` records and
    :data:`MAX_BATCH_BYTES` bytes per frame) and never waits to fill a batch.

    Unknown types are skipped (the whole WebSocket message is the unit, so no length field is
    needed to skip one) and counted as ``unknown_type``: adding a frame type is compatible.

Version
    :data:`PROTOCOL_VERSION` is sent in :data:`VERSION_HEADER` by both sides. It is bumped only
    when a change is not backward compatible (a layout or the meaning of a field changes);
    a new frame type or a new optional JSON field does not bump it.

Upgrade and close
    A bad credential is refused with HTTP 401 before the upgrade; a missing or unsupported
    version header gets the upgrade and then close code 4004. :class:`CloseCode` lists the rest.

Security limits (enforced by the parser)
    A frame is at most :data:`MAX_FRAME_SIZE` bytes, a datagram record at least 1 byte, the
    records must exactly fill the frame, and a DATA frame holds at least one record. A frame
    that breaks a rule is dropped and counted by :class:`DropReason`; the link stays open.
    (A WebSocket message over 1 MiB is refused by the WebSocket layer and closes the link.)

Test vector (channel 17 carrying ``01 02`` and ``ff``)::

    01 00 00 00 11  00 02 01 02  00 01 ff

The same text is in ``docs/protocol.md``; when they disagree, one of them is a bug.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = [
    "FRAME_DATA",
    "HEADER_SIZE",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_RECORDS",
    "MAX_CHANNEL",
    "MAX_DATAGRAM_SIZE",
    "MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "RECORD_HEADER_SIZE",
    "VERSION_HEADER",
    "CloseCode",
    "DataFrame",
    "DropReason",
    "FrameError",
    "decode",
    "encode_batches",
    "encode_data",
    "validate",
]

PROTOCOL_VERSION = 1
VERSION_HEADER = "Higgs-Relay-Version"

FRAME_DATA = 0x01
"""type (u8) = 0x01 ‖ channel (u32) ‖ records ``len (u16) ‖ datagram`` (len >= 1)."""

HEADER_SIZE = 5
RECORD_HEADER_SIZE = 2
MAX_FRAME_SIZE = 65_535
MAX_DATAGRAM_SIZE = MAX_FRAME_SIZE - HEADER_SIZE - RECORD_HEADER_SIZE
MAX_CHANNEL = 0xFFFF_FFFF
MAX_BATCH_RECORDS = 64
MAX_BATCH_BYTES = 60 * 1024

_HEAD = struct.Struct(">BI")
_U16 = struct.Struct(">H")
_HEAD_FIRST = struct.Struct(">BIH")


class CloseCode(IntEnum):
    """WebSocket close codes of the relay links (``docs/protocol.md`` §3.4)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect with backoff
    UNAUTHORIZED = 4001  # bad or revoked credential: do not retry with it
    SESSION_CLOSED = 4002  # session closed or expired: ask for a new route
    REPLACED = 4003  # a newer connection took this link's place
    BAD_VERSION = 4004  # protocol version not supported
    TIMEOUT = 4008  # no pong in time: reconnect
    NODE_OFFLINE = 4009  # (client link) the node deregistered or went offline: fail over


class DropReason(StrEnum):
    """Why the relay dropped a frame (label of ``higgs_relay_dropped_total``)."""

    MALFORMED = "malformed"
    UNKNOWN_TYPE = "unknown_type"
    WRONG_CHANNEL = "wrong_channel"
    NO_PEER = "no_peer"
    QUEUE_FULL = "queue_full"
    SESSION_CLOSED = "session_closed"


class FrameError(ValueError):
    """A frame the parser rejects; :attr:`reason` says how it is counted."""

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DataFrame:
    channel: int
    datagrams: list[memoryview]


Buffer = bytes | bytearray | memoryview


def encode_data(channel: int, datagrams: Iterable[Buffer]) -> bytes:
    """One DATA frame; raises ValueError if it would break a security limit."""
    if not 0 <= channel <= MAX_CHANNEL:
        raise ValueError(f"channel {channel} out of range 0..{MAX_CHANNEL}")
    parts: list[Buffer] = [_HEAD.pack(FRAME_DATA, channel)]
    size = HEADER_SIZE
    for datagram in datagrams:
        length = len(datagram)
        if length < 1:
            raise ValueError("a datagram must be at least 1 byte")
        size += RECORD_HEADER_SIZE + length
        if size > MAX_FRAME_SIZE:
            raise ValueError(f"frame would exceed {MAX_FRAME_SIZE} bytes")
        parts.append(_U16.pack(length))
        parts.append(datagram)
    if size == HEADER_SIZE:
        raise ValueError("a DATA frame carries at least one datagram")
    return b"".join(parts)


def encode_batches(
    channel: int,
    datagrams: Sequence[Buffer],
    *,
    max_records: int = MAX_BATCH_RECORDS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[bytes]:
    """Packs datagrams into as few DATA frames as the batch limits allow, in order.

    Datagrams that are empty or too large for any frame are skipped (a sender has nothing
    better to do with them; WireGuard never produces either)."""
    frames: list[bytes] = []
    batch: list[Buffer] = []
    size = HEADER_SIZE
    for datagram in datagrams:
        length = len(datagram)
        if not 1 <= length <= MAX_DATAGRAM_SIZE:
            continue
        record = RECORD_HEADER_SIZE + length
        if batch and (len(batch) >= max_records or size + record > max_bytes):
            frames.append(encode_data(channel, batch))
            batch, size = [], HEADER_SIZE
        batch.append(datagram)
        size += record
    if batch:
        frames.append(encode_data(channel, batch))
    return frames


def validate(frame: Buffer) -> tuple[int, int]:
    """The hub's fast path: checks a frame without copying; returns (channel, datagram count).

    Raises :class:`FrameError` naming the drop reason."""
    size = len(frame)
    if size > HEADER_SIZE + RECORD_HEADER_SIZE and size <= MAX_FRAME_SIZE:
        # Fast path: a frame holding exactly one datagram (the common case under low load).
        kind, channel, first = _HEAD_FIRST.unpack_from(frame, 0)
        if kind == FRAME_DATA and first == size - HEADER_SIZE - RECORD_HEADER_SIZE:
            return channel, 1
    if size < HEADER_SIZE:
        raise FrameError(DropReason.MALFORMED, f"frame of {size} bytes is shorter than a header")
    if size > MAX_FRAME_SIZE:
        raise FrameError(DropReason.MALFORMED, f"frame of {size} bytes exceeds {MAX_FRAME_SIZE}")
    kind, channel = _HEAD.unpack_from(frame, 0)
    if kind != FRAME_DATA:
        raise FrameError(DropReason.UNKNOWN_TYPE, f"unknown frame type 0x{kind:02x}")
    if size == HEADER_SIZE:
        raise FrameError(DropReason.MALFORMED, "DATA frame without a record")
    offset = HEADER_SIZE
    count = 0
    while offset < size:
        if offset + RECORD_HEADER_SIZE > size:
            raise FrameError(DropReason.MALFORMED, f"truncated record header at byte {offset}")
        length = (frame[offset] << 8) | frame[offset + 1]
        if length == 0:
            raise FrameError(DropReason.MALFORMED, f"zero-length record at byte {offset}")
        offset += RECORD_HEADER_SIZE + length
        count += 1
    if offset != size:
        raise FrameError(DropReason.MALFORMED, f"last record overruns the frame by {offset - size}")
    return channel, count


def decode(frame: Buffer) -> DataFrame:
    """Parses a DATA frame; the datagrams are views into ``frame`` (copy them to keep them)."""
    channel, _ = validate(frame)
    view = memoryview(frame)
    datagrams: list[memoryview] = []
    offset = HEADER_SIZE
    size = len(view)
    while offset < size:
        length = (view[offset] << 8) | view[offset + 1]
        offset += RECORD_HEADER_SIZE
        datagrams.append(view[offset : offset + length])
        offset += length
    return DataFrame(channel, datagrams)
