"""Control messages: the JSON text frames on the relay links (``docs/protocol.md`` §3.3).

Each text WebSocket message is one JSON object with a ``"type"``. Unknown types come back as
:class:`UnknownMessage` (receivers log and ignore them) and unknown fields are ignored, so adding
either is backward compatible. Malformed JSON, a non-object, or a known type with bad fields
raises :class:`ControlError` naming the problem.

Server → node: ``hello``, ``sync``, ``peer_add``, ``peer_remove``, ``punch`` (hole punching,
§3.5).
Node → server: ``peer_stats``.
Server → client session link: ``hello``, ``session_closed`` (right before a 4002 close).
"""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
)

from higgs.common.keys import validate_public_key

__all__ = [
    "MAX_CONTROL_MESSAGE_SIZE",
    "ControlError",
    "ControlMessage",
    "Hello",
    "Peer",
    "PeerAdd",
    "PeerRemove",
    "PeerStat",
    "PeerStats",
    "Punch",
    "SessionClosed",
    "Sync",
    "UnknownMessage",
    "dump",
    "parse",
    "parse_obj",
]

MAX_CONTROL_MESSAGE_SIZE = 1 << 20
"""Security limit: a control message larger than this is rejected before parsing."""

_CHANNEL = Annotated[int, Field(ge=0, le=0xFFFF_FFFF)]


class ControlError(ValueError):
    """A text frame that is not a valid control message."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Hello(_Message):
    """Server → node (``node_id``, ``heartbeat_interval_s``) or → client (``session_id``,
    ``channel``)."""

    type: Literal["hello"] = "hello"
    version: int
    node_id: str | None = None
    heartbeat_interval_s: float | None = None
    session_id: str | None = None
    channel: _CHANNEL | None = None


class Peer(_Message):
    session_id: str
    channel: _CHANNEL
    public_key: str
    address: str
    relayed: bool = False
    # The session's UDP relay endpoint when the node has no verified direct endpoint: the
    # node sets it as the peer's endpoint with a persistent keepalive (docs/protocol.md §5).
    relay_endpoint: str | None = None
    # The base URL (ws[s]://host:port) of the relay host's hub that carries this session's
    # WebSocket data (docs/scaleout.md "Relay hosts"); absent: the node's own control link.
    relay_hub: str | None = None

    @model_serializer(mode="wrap")
    def _omit_no_relay(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        for name in ("relay_endpoint", "relay_hub"):
            if out.get(name) is None:
                out.pop(name, None)  # absent unless there is one: older nodes' wire
        return out

    @field_validator("relay_hub")
    @classmethod
    def _relay_hub(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith(("ws://", "wss://")) and len(value) <= 300):
            raise ValueError("relay_hub must be a ws:// or wss:// URL")
        return value.rstrip("/") if value is not None else None

    @field_validator("relay_endpoint")
    @classmethod
    def _relay_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            host, _, port = value.rpartition(":")
            if host.startswith("[") and host.endswith("]"):
                ipaddress.IPv6Address(host[1:-1])  # an IPv6 relay: [addr]:port
            else:
                ipaddress.IPv4Address(host)
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError("relay_endpoint must look like IPv4:port or [IPv6]:port")
        return value

    @field_validator("public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return validate_public_key(value)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_interface(value)
        except ValueError as exc:
            raise ValueError(f"address {value!r} is not an IP address with prefix") from exc
        return value


class PeerAdd(Peer):
    type: Literal["peer_add"] = "peer_add"


class Sync(_Message):
    type: Literal["sync"] = "sync"
    peers: list[Peer]


class PeerRemove(_Message):
    type: Literal["peer_remove"] = "peer_remove"
    session_id: str
    channel: _CHANNEL
    public_key: str
    reason: str = ""

    @field_validator("public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return validate_public_key(value)


class PeerStat(_Message):
    public_key: str
    rx_bytes: int = Field(ge=0)
    tx_bytes: int = Field(ge=0)
    last_handshake_s: float | None = None
    # The peer's current WireGuard endpoint (issue 12: the server sees a punched path).
    endpoint: str | None = None


class PeerStats(_Message):
    type: Literal["peer_stats"] = "peer_stats"
    peers: list[PeerStat]


class Punch(_Message):
    """Server → node: open a direct path to one session's client (docs/protocol.md §3.5).

    ``peer_endpoint`` is the client's public ``ip:port`` as the UDP relay saw it. ``in_s``
    seconds after it got this (older servers: at wall time ``at``) the node sends probe
    datagrams (``higgs.protocol.reachability`` layout, with ``nonce``) from its WireGuard
    port to it for ``window_s``; when it hears the client's
    probe with the same nonce both NATs are open and it moves the peer's endpoint there.
    ``steer``: the client runs no software of ours (an official WireGuard app): no probes,
    the node sets the endpoint at once and WireGuard's roaming moves the client when its NAT
    lets the node's packets in; the node goes back to the relay if the client did not follow.
    """

    type: Literal["punch"] = "punch"
    session_id: str
    public_key: str
    peer_endpoint: str
    nonce: str = Field(pattern=r"^[0-9a-f]{32}$")
    at: float = Field(ge=0)
    # Seconds from sending to the start: what a node uses, so that its clock need not agree
    # with the server's (absent from older servers: then ``at``).
    in_s: float | None = Field(default=None, ge=0, le=60)
    window_s: float = Field(gt=0, le=60)
    steer: bool = False

    def delay_s(self) -> float:
        """How long to wait before sending, on our own clock."""
        return self.in_s if self.in_s is not None else max(0.0, self.at - time.time())

    @field_validator("public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return validate_public_key(value)

    @field_validator("peer_endpoint")
    @classmethod
    def _peer_endpoint(cls, value: str) -> str:
        _ipv4_endpoint(value, "peer_endpoint")
        return value


def _ipv4_endpoint(value: str, name: str) -> None:
    host, _, port = value.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{name} must look like IPv4:port") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{name} must look like IPv4:port")


class SessionClosed(_Message):
    type: Literal["session_closed"] = "session_closed"
    reason: str = ""


class UnknownMessage(_Message):
    """A message whose type this version does not know; ``raw`` holds the whole object."""

    type: str
    raw: dict[str, Any]


ControlMessage = Hello | Sync | PeerAdd | PeerRemove | PeerStats | SessionClosed | Punch

_KNOWN: dict[str, type[_Message]] = {
    "hello": Hello,
    "sync": Sync,
    "peer_add": PeerAdd,
    "peer_remove": PeerRemove,
    "peer_stats": PeerStats,
    "session_closed": SessionClosed,
    "punch": Punch,
}
_OBJECT = TypeAdapter(dict[str, Any])


def parse_obj(obj: object) -> ControlMessage | UnknownMessage:
    """Validates an already-decoded JSON value."""
    if not isinstance(obj, dict):
        raise ControlError(f"a control message is a JSON object, not {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise ControlError('a control message needs a string field "type"')
    model = _KNOWN.get(kind)
    if model is None:
        return UnknownMessage(type=kind, raw=_OBJECT.validate_python(obj))
    try:
        message: ControlMessage = model.model_validate(obj)  # type: ignore[assignment]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise ControlError(f"{kind}: {where}: {first['msg']}") from None
    return message


def parse(text: str | bytes) -> ControlMessage | UnknownMessage:
    """Parses one text frame."""
    if len(text) > MAX_CONTROL_MESSAGE_SIZE:
        raise ControlError(f"control message larger than {MAX_CONTROL_MESSAGE_SIZE} bytes")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ControlError(f"control message is not valid JSON: {exc}") from None
    return parse_obj(obj)


def dump(message: ControlMessage) -> str:
    """The JSON text of a message, as sent on the wire."""
    return message.model_dump_json()
