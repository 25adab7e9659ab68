"""REST API models (docs/protocol.md §2): the JSON bodies bosonserver, higgsnode and higgsvpn
exchange, as pydantic models.

The server validates every request against these models; the node and the client build their
requests from them and parse the answers with them. Receivers ignore unknown fields, so adding
an optional field is a compatible change (protocol §"version").

Identifiers: node ids look like ``n_<16 hex>``, session ids ``s_<16 hex>``. Timestamps are
ISO 8601 in UTC. Public keys are base64 WireGuard (X25519) keys and are returned in canonical
form. Credentials (``hg?_…``) appear only in the answers that issue them
(:class:`NodeRegisterResponse`, :class:`RouteResponse`) and in ``Authorization`` headers.
"""

from __future__ import annotations

import ipaddress
import re
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from higgs.common.keys import validate_public_key

__all__ = [
    "API_PREFIX",
    "CLIENT_NAME_PATTERN",
    "CLOSE_REASONS",
    "NODE_ID_PATTERN",
    "PUBLIC_KEY_PATTERN",
    "SESSION_ID_PATTERN",
    "AdminClient",
    "AdminClientList",
    "AdminNode",
    "AdminNodeList",
    "AdminSession",
    "AdminSessionList",
    "ClientCreateRequest",
    "ClientCreated",
    "ClientName",
    "ClientQuotaRequest",
    "CloseReason",
    "CountryCode",
    "DirectPath",
    "Endpoint",
    "EnrollmentKeyCreated",
    "EnrollmentKeyRequest",
    "ErrorResponse",
    "Health",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "KeyChallenge",
    "KeyProof",
    "NodeId",
    "NodeList",
    "NodeRegisterRequest",
    "NodeRegisterResponse",
    "NodeState",
    "NodeSummary",
    "PeerStat",
    "PortMappingReport",
    "PublicKey",
    "PunchAnswer",
    "PunchOffer",
    "ReachabilityConfirm",
    "ReachabilityResult",
    "RelayList",
    "RelayPath",
    "RelayRtts",
    "RelayTarget",
    "RouteMode",
    "RouteNode",
    "RouteRequest",
    "RouteResponse",
    "SessionId",
    "SessionInfo",
    "SessionState",
    "WireGuardConfig",
    "client_address_v6",
    "node_address_v6",
    "parse_endpoint",
]

API_PREFIX = "/v1"

NODE_ID_PATTERN = r"^n_[0-9a-f]{16}$"
SESSION_ID_PATTERN = r"^s_[0-9a-f]{16}$"

NodeId = Annotated[str, StringConstraints(pattern=NODE_ID_PATTERN)]
SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]

NodeState = Literal["online", "offline", "stopped"]
SessionState = Literal["open", "closed"]
RouteMode = Literal["auto", "direct", "relay"]
CloseReason = Literal[
    "client_closed",  # DELETE /v1/sessions/{id}
    "expired",  # TTL ran out without renewal or traffic
    "client_revoked",  # the operator revoked the client
    "node_stopped",  # the node deregistered
    "replaced",  # the same client asked for a new route with the same key to the same node
]
CLOSE_REASONS: tuple[str, ...] = CloseReason.__args__  # type: ignore[attr-defined]


# A WireGuard (X25519) public key in canonical base64: 32 bytes are 43 characters whose last
# carries 2 bits of padding (so only 16 letters can end it), then one '='. Published in the
# OpenAPI schema so that clients (and the contract fuzzer) know the exact format.
PUBLIC_KEY_PATTERN = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"


def _public_key(value: str) -> str:
    return validate_public_key(value)


PublicKey = Annotated[
    str,
    StringConstraints(min_length=44, max_length=44, pattern=PUBLIC_KEY_PATTERN),
    AfterValidator(_public_key),
]
"""A base64 WireGuard public key (32 bytes), in canonical base64 (44 characters)."""


CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$"), AfterValidator(str.upper)]
"""ISO 3166-1 alpha-2 country code; lower case is accepted and upper-cased."""


_COUNTER_MAX = 2**53 - 1  # the largest integer every JSON parser holds exactly

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$"
)


def parse_endpoint(value: str) -> tuple[str, int]:
    """Splits ``host:port`` / ``[v6]:port``; raises ValueError naming the problem."""
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ValueError("IPv6 endpoint must look like [addr]:port")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError("endpoint must look like host:port")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not _HOSTNAME_RE.match(host) or host.replace(".", "").isdigit():
                raise ValueError(
                    f"endpoint host {host!r} is not an IPv4 address or hostname"
                ) from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("endpoint port must be 1-65535")
    return host, int(port_text)


def _endpoint(value: str) -> str:
    parse_endpoint(value)
    return value


# Semantic string formats: JSON Schema cannot express them as patterns, so the schema names
# them (``format``) and the description says what they are; the validators enforce them.
Endpoint = Annotated[
    str,
    StringConstraints(min_length=3, max_length=300),
    AfterValidator(_endpoint),
    Field(json_schema_extra={"format": "endpoint"}),
]
"""A UDP endpoint ``host:port`` or ``[ipv6]:port``."""


_SHARED_SPACE = ipaddress.IPv4Network("100.64.0.0/10")


def _tunnel_subnet(value: str) -> str:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"tunnel_subnet must be an IPv4 network like 10.77.0.0/24 ({exc})"
        ) from None
    if not 16 <= net.prefixlen <= 29:
        raise ValueError("tunnel_subnet prefix length must be between /16 and /29")
    if not (net.is_private or net.subnet_of(_SHARED_SPACE)):
        raise ValueError("tunnel_subnet must be a private (RFC 1918) or shared (100.64/10) range")
    return str(net)


TunnelSubnet = Annotated[
    str,
    StringConstraints(min_length=9, max_length=18),
    AfterValidator(_tunnel_subnet),
    Field(json_schema_extra={"format": "ipv4-private-network"}),
]

_ULA = ipaddress.IPv6Network("fc00::/7")


def _tunnel_subnet_v6(value: str) -> str:
    try:
        net = ipaddress.IPv6Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"tunnel_subnet_v6 must be an IPv6 network like fd12:3456:789a::/64 ({exc})"
        ) from None
    if not 48 <= net.prefixlen <= 112:
        raise ValueError("tunnel_subnet_v6 prefix length must be between /48 and /112")
    if not net.subnet_of(_ULA):
        raise ValueError("tunnel_subnet_v6 must be a unique local range (fc00::/7)")
    return str(net)


TunnelSubnetV6 = Annotated[
    str,
    StringConstraints(min_length=6, max_length=43),
    AfterValidator(_tunnel_subnet_v6),
    Field(json_schema_extra={"format": "ipv6-ula-network"}),
]


def node_address_v6(subnet_v6: str) -> ipaddress.IPv6Interface:
    """The node's own IPv6 tunnel address: ``::1`` of its prefix (like .1 for IPv4)."""
    net = ipaddress.IPv6Network(subnet_v6)
    return ipaddress.IPv6Interface(f"{net.network_address + 1}/{net.prefixlen}")


def client_address_v6(
    subnet_v4: str, subnet_v6: str, address_v4: str
) -> ipaddress.IPv6Address | None:
    """A client's IPv6 tunnel address: the same host number in the node's IPv6 prefix as its
    IPv4 address has in the IPv4 subnet (10.77.0.5 in 10.77.0.0/24 -> <prefix>::5).

    Server and node both derive it, so it needs no storage and no extra message field, and it
    is collision-free exactly when the IPv4 addresses are. None when the address is outside
    the IPv4 subnet or the IPv6 prefix is too small (both are validated, so only a confused
    peer gets here).
    """
    net4 = ipaddress.IPv4Network(subnet_v4, strict=False)
    net6 = ipaddress.IPv6Network(subnet_v6, strict=False)
    ip4 = ipaddress.IPv4Interface(address_v4).ip
    if ip4 not in net4:
        return None
    host = int(ip4) - int(net4.network_address)
    if host < 2 or host >= net6.num_addresses:
        return None
    return net6.network_address + host


class _Model(BaseModel):
    # Unknown fields are ignored so that a newer peer can add optional fields (protocol.md).
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Request(_Model):
    # Requests are validated strictly: ``"ipv6": 0`` or ``"port": "80"`` is a 422 naming the
    # field, not a silent coercion, so what the schema says is exactly what is accepted.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _whole_numbers(cls, value: object) -> object:
        # JSON has one number type: 2.0 *is* the integer 2 for JSON Schema, which strict
        # validation would refuse. Strings and booleans stay refused; a float field takes 2.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class ErrorResponse(_Model):
    """Every non-2xx answer. ``error`` is a stable code, ``message`` names the bad field."""

    error: str
    message: str


class Health(_Model):
    status: str
    database: str | None = None


# --- nodes -----------------------------------------------------------------------------------


class KeyChallenge(_Model):
    """``POST /v1/nodes/challenge``: what a node needs to prove it holds its private key
    (protocol/keyproof.py)."""

    nonce: str = Field(description="single use; send it back in the registration's proof")
    server_key: str = Field(description="the server's static X25519 public key (base64)")
    expires_in_s: int


class KeyProof(_Request):
    """``HMAC-SHA256(HKDF(X25519(node_private, server_key)), nonce ‖ public_key)``."""

    nonce: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    mac: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{43}=$")]


# --- port mapping and its reachability check (docs/protocol.md §2.9) ---------------------------

PortMapMethod = Literal["pcp", "natpmp", "upnp"]


class PortMappingReport(_Request):
    """What the node's home router granted (or why nothing), in registrations and heartbeats."""

    method: PortMapMethod | None = Field(
        default=None, description="the method that worked; null = no mapping"
    )
    external_endpoint: Endpoint | None = Field(
        default=None, description="the router's public address and mapped port"
    )
    lifetime_s: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    reason: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        default=None, description="why there is no mapping (each method's failure)"
    )


class ReachabilityConfirm(_Request):
    """``POST /v1/nodes/{node_id}/reachability``: the nonce of a probe that reached the node."""

    nonce: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class ReachabilityResult(_Model):
    verified: bool
    endpoint: str | None = Field(description="the endpoint now offered for direct mode")


class NodeRegisterRequest(_Request):
    """``POST /v1/nodes/register`` with ``Authorization: Bearer hge_…`` (or the node's hgn_)."""

    public_key: PublicKey
    listen_port: int = Field(ge=1, le=65535, description="WireGuard UDP listen port")
    endpoint: Endpoint | None = Field(
        default=None, description="reachable UDP endpoint host:port, or null when behind NAT"
    )
    tunnel_subnet: TunnelSubnet = Field(description="the node's tunnel network; the node is .1")
    tunnel_subnet_v6: TunnelSubnetV6 | None = Field(
        default=None,
        description="the node's IPv6 tunnel prefix (ULA) when it forwards IPv6 (NAT66 to a "
        "global uplink address); null = IPv6 from clients is rejected",
    )
    tunnel_mtu: int = Field(default=1380, ge=1280, le=9000)
    max_clients: int = Field(default=32, ge=1, le=10000)
    bandwidth_mbps: float | None = Field(default=None, ge=0, le=1_000_000)
    country: CountryCode | None = None
    region: Annotated[str, StringConstraints(max_length=64)] | None = None
    version: Annotated[str, StringConstraints(max_length=32)] = ""
    proof: KeyProof | None = Field(
        default=None,
        description="proof of the private key (from POST /v1/nodes/challenge); required "
        "unless the server allows unproven keys",
    )
    port_mapping: PortMappingReport | None = Field(
        default=None,
        description="the router mapping; its endpoint is offered once a probe verified it",
    )


class NodeRegisterResponse(_Model):
    node_id: NodeId
    node_token: str = Field(description="hgn_ token; a new one on every registration")
    heartbeat_interval_s: int
    relay_url: str = Field(description="WebSocket URL of the node link (§3)")
    tunnel_address: str = Field(description="the node's own tunnel address, e.g. 10.77.0.1/24")
    tunnel_address_v6: str | None = Field(
        default=None, description="the node's own IPv6 tunnel address (::1 of its prefix)"
    )


class PeerStat(_Request):
    public_key: PublicKey
    rx_bytes: int = Field(default=0, ge=0, le=_COUNTER_MAX)
    tx_bytes: int = Field(default=0, ge=0, le=_COUNTER_MAX)
    last_handshake_s: float | None = Field(
        default=None, ge=0, description="seconds since the last handshake; null = never"
    )


# --- relay hosts and their RTT (issue 14; docs/protocol.md §5.5) ---
_H = "[0-9A-Fa-f]{1,4}"
_V4 = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# An IPv4 or IPv6 address (hex forms, no zone), written out so that the schema says what the
# server takes: a client generating requests from it (and the contract test's schema-valid
# cases) sends addresses, and every string it matches parses as one.
IP_ADDRESS_PATTERN = (
    rf"^({_V4}(\.{_V4}){{3}}"
    rf"|({_H}:){{7}}{_H}|({_H}:){{1,7}}:|({_H}:){{1,6}}:{_H}"
    rf"|({_H}:){{1,5}}(:{_H}){{1,2}}|({_H}:){{1,4}}(:{_H}){{1,3}}"
    rf"|({_H}:){{1,3}}(:{_H}){{1,4}}|({_H}:){{1,2}}(:{_H}){{1,5}}"
    rf"|{_H}:(:{_H}){{1,6}}|:((:{_H}){{1,7}}|:))$"
)


def _relay_address(value: str) -> str:
    return str(ipaddress.ip_address(value))


RelayRtts = Annotated[
    dict[
        Annotated[
            str, StringConstraints(pattern=IP_ADDRESS_PATTERN), AfterValidator(_relay_address)
        ],
        Annotated[float, Field(ge=0, le=60_000)],
    ],
    # No other keys: the schema must say so, or schema-valid requests would carry them.
    Field(max_length=64, json_schema_extra={"additionalProperties": False}),
]


class RelayTarget(_Model):
    """A live relay host as nodes and clients time it: the probe goes to address:probe_port."""

    address: str
    probe_port: int = Field(ge=1, le=65535)


class RelayList(_Model):
    """``GET /v1/relays`` (a client's token): the relay hosts to time before a route."""

    relays: list[RelayTarget]


class HeartbeatRequest(_Request):
    """``POST /v1/nodes/{node_id}/heartbeat``; every metric is optional."""

    cpu_percent: float | None = Field(default=None, ge=0, le=100)
    memory_percent: float | None = Field(default=None, ge=0, le=100)
    peers: int | None = Field(default=None, ge=0, le=_COUNTER_MAX)
    rx_bytes: int | None = Field(default=None, ge=0, le=_COUNTER_MAX)
    tx_bytes: int | None = Field(default=None, ge=0, le=_COUNTER_MAX)
    budget_left_mb: float | None = Field(
        default=None, ge=0, description="bandwidth budget left this period; null = unlimited"
    )
    budget_total_mb: float | None = Field(default=None, gt=0)
    latency_ms: float | None = Field(default=None, ge=0, le=60_000)
    tunnel_mtu: int | None = Field(
        default=None, ge=1280, le=9000, description="the node's tunnel MTU now; null = unchanged"
    )
    ipv6: bool | None = Field(
        default=None,
        description="the node forwards IPv6 right now (false: its uplink lost global IPv6)",
    )
    peer_stats: list[PeerStat] = Field(default_factory=list, max_length=10_000)
    port_mapping: PortMappingReport | None = Field(
        default=None, description="the router mapping now; null = unchanged"
    )
    # --- issue 15: the owner's pause switch ---
    paused: bool | None = Field(
        default=None,
        description="the owner paused the node: route no new sessions here (open ones drain)",
    )
    relay_rtt_ms: RelayRtts | None = Field(
        default=None, description="relay address → the node's RTT to it in ms (§5.5)"
    )


class HeartbeatResponse(_Model):
    heartbeat_interval_s: int
    state: NodeState
    relays: list[RelayTarget] = Field(
        default_factory=list, description="the live relay hosts to time (§5.5)"
    )


class NodeSummary(_Model):
    """A node as a client sees it (``GET /v1/nodes``): no keys, no endpoints."""

    node_id: NodeId
    country: str | None
    region: str | None
    state: NodeState
    load: float = Field(description="open sessions / max_clients, 0..1")
    bandwidth_mbps: float | None
    direct: bool = Field(description="the node reported a reachable endpoint")


class NodeList(_Model):
    nodes: list[NodeSummary]


# --- routes and sessions ---------------------------------------------------------------------


class RouteRequest(_Request):
    """``POST /v1/routes`` with ``Authorization: Bearer hgc_…``."""

    client_public_key: PublicKey
    node_id: NodeId | None = None
    country: CountryCode | None = None
    min_bandwidth_mbps: float | None = Field(default=None, ge=0)
    mode: RouteMode = Field(
        default="auto",
        description="auto: both paths; direct: only nodes with an endpoint; relay: relay only",
    )
    relay_rtt_ms: RelayRtts | None = Field(
        default=None, description="relay address → the client's RTT to it in ms (§5.5)"
    )


class RouteNode(_Model):
    node_id: NodeId
    country: str | None
    region: str | None


class WireGuardConfig(_Model):
    """Everything the client's [Interface]/[Peer] needs except its own private key."""

    address: str = Field(description="the client's tunnel address, e.g. 10.77.0.5/32")
    address_v6: str | None = Field(
        default=None,
        description="the client's IPv6 tunnel address (e.g. fd…::5/128) when the node forwards "
        "IPv6; null: IPv6 through this node is rejected",
    )
    node_public_key: str
    dns: list[str]
    mtu: int
    allowed_ips: list[str]
    persistent_keepalive: int


class DirectPath(_Model):
    endpoint: str


class RelayPath(_Model):
    url: str = Field(description="WebSocket URL of the session link (§3)")
    token: str = Field(description="hgr_ token admitting this client to this session only")
    channel: int = Field(ge=1, le=0xFFFFFFFF)


# --- UDP relay (issue 11; docs/protocol.md §2.3 and §5) ---
class UdpRelayPath(_Model):
    endpoint: str = Field(description="relay_ip:port leased to this session (both legs use it)")


class RouteResponse(_Model):
    session_id: SessionId
    expires_at: datetime
    ttl_s: int
    node: RouteNode
    wireguard: WireGuardConfig
    direct: DirectPath | None
    relay: RelayPath | None
    udp_relay: UdpRelayPath | None = None  # absent from servers without a UDP relay


# --- hole punching (issue 12; docs/protocol.md §2.7) ---
class PunchOffer(_Model):
    """One attempt: ``in_s`` after this answer (older servers: at wall time ``at``) send
    probes (the reachability layout with ``nonce``) from the WireGuard port to
    ``peer_endpoint`` for ``window_s``; the node does the same toward the client. Hearing
    the node's probe means both NATs are open."""

    nonce: str = Field(pattern=r"^[0-9a-f]{32}$")
    peer_endpoint: str = Field(description="the node's public ip:port as the UDP relay saw it")
    at: float = Field(description="unix time (the server's clock) at which both ends start")
    in_s: float | None = Field(
        default=None,
        ge=0,
        le=60,
        description="seconds from this answer to the start: what a client uses, so that its "
        "clock need not agree with the server's (absent from older servers: then ``at``)",
    )
    window_s: float

    def delay_s(self) -> float:
        """How long to wait before sending, on our own clock."""
        return self.in_s if self.in_s is not None else max(0.0, self.at - time.time())


class PunchAnswer(_Model):
    """``GET /v1/sessions/{id}/punch``: what the server observed of both WireGuard sockets
    (from the UDP relay's bound legs) and, when a direct path may be tried, an offer."""

    client_public: str | None = Field(description="the client's public ip:port as observed")
    node_public: str | None = Field(description="the node's public ip:port as observed")
    offer: PunchOffer | None
    why: str = Field(default="", description="why there is no offer")


class SessionInfo(_Model):
    """``GET /v1/sessions/{id}`` (and the answer of renew and DELETE)."""

    session_id: SessionId
    state: SessionState
    node_id: NodeId
    client_public_key: str
    address: str
    channel: int
    mode: RouteMode
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None
    close_reason: str | None
    relay_datagrams: int = 0
    relay_bytes: int = 0
    udp_relay: UdpRelayPath | None = Field(
        default=None, description="the UDP relay endpoint now (it changes when a relay host dies)"
    )
    relay_url: str | None = Field(
        default=None,
        description="the WebSocket relay URL now, when a relay host's hub carries the session "
        "(it moves with the session's relay host)",
    )


# --- admin -----------------------------------------------------------------------------------


class AdminNode(_Model):
    node_id: NodeId
    public_key: str
    state: NodeState
    connected: bool = Field(description="the node's relay/control link is up")
    endpoint: str | None
    listen_port: int
    tunnel_subnet: str
    tunnel_subnet_v6: str | None = None
    tunnel_mtu: int
    max_clients: int
    bandwidth_mbps: float | None
    country: str | None
    region: str | None
    version: str
    open_sessions: int
    registered_at: datetime
    last_heartbeat_at: datetime | None
    metrics: dict[str, Any]


class AdminNodeList(_Model):
    nodes: list[AdminNode]


class AdminSession(SessionInfo):
    client: str = Field(description="the client's name")


class AdminSessionList(_Model):
    sessions: list[AdminSession]


class AdminClient(_Model):
    name: str
    created_at: datetime
    revoked: bool
    revoked_at: datetime | None
    open_sessions: int
    # --- issue 15: usage this UTC month and the monthly quota ---
    month: str | None = Field(default=None, description="the usage month, YYYY-MM (UTC)")
    rx_bytes: int = Field(default=0, description="bytes the node received from the client")
    tx_bytes: int = Field(default=0, description="bytes the node sent to the client")
    quota_bytes: int | None = Field(default=None, description="monthly quota; null = unlimited")


class ClientQuotaRequest(_Request):
    """``PUT /v1/admin/clients/{name}/quota``: bytes per month both ways; null = unlimited."""

    quota_bytes: int | None = Field(default=None, ge=0, le=10**18)


class AdminClientList(_Model):
    clients: list[AdminClient]


CLIENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
ClientName = Annotated[str, StringConstraints(pattern=CLIENT_NAME_PATTERN)]
"""1-64 letters, digits, ``_ . @ -``; starts with a letter or digit."""


class ClientCreateRequest(_Request):
    """``POST /v1/admin/clients`` (the API form of ``bosonserver client add``)."""

    name: ClientName


class ClientCreated(_Model):
    name: str
    token: str = Field(description="hgc_ token; shown only in this answer")


class EnrollmentKeyRequest(_Request):
    """``POST /v1/admin/enrollment-keys`` (the API form of ``bosonserver enroll create``)."""

    uses: int = Field(default=1, ge=1, le=100_000)
    expires_in_s: int | None = Field(
        default=None, ge=1, le=366 * 86400, description="lifetime; null = never expires"
    )


class EnrollmentKeyCreated(_Model):
    key: str = Field(description="hge_ key; shown only in this answer")
    uses_left: int
    expires_at: datetime | None
