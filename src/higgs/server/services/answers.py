"""The API answers about sessions, built from rows and node facts (pure; no I/O).

:func:`route_answer` is everything a client needs to bring its tunnel up (docs/protocol.md
§2, ``POST /v1/routes``): its tunnel address(es), the node's key and DNS, and the paths it may
use: the node's endpoint unless the client asked for the relay only, the relay URL, token and
channel unless it asked for the direct path only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from higgs.protocol.api import (
    AdminSession,
    AdminSessionList,
    DirectPath,
    RelayPath,
    RouteNode,
    RouteResponse,
    SessionInfo,
    UdpRelayPath,
    WireGuardConfig,
    client_address_v6,
    node_address_v6,
)
from higgs.server.services import routing
from higgs.server.services.nodeview import NodeFacts
from higgs.server.store.states import RouteMode
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "ALLOWED_IPS",
    "KEEPALIVE_S",
    "SESSION_RELAY_PATH",
    "Counters",
    "admin_session_list",
    "route_answer",
    "session_info",
]

ALLOWED_IPS = ["0.0.0.0/0", "::/0"]
KEEPALIVE_S = 25
SESSION_RELAY_PATH = "/v1/relay/session"

Counters = Callable[[str], tuple[int, int]]
"""(datagrams, bytes) the relay forwarded for a session id."""


def route_answer(
    row: SessionRow,
    facts: NodeFacts,
    token: str,
    *,
    ttl_s: int,
    relay_base: str,
    udp_relay: UdpRelayPath | None = None,
) -> RouteResponse:
    """The answer to the route request that opened ``row`` on the node of ``facts``;
    ``token`` is the session's relay token (stored only hashed, so it is passed in)."""
    node_ip = routing.node_address(facts.tunnel_subnet).ip
    dns, address_v6 = [str(node_ip)], None
    if facts.forwards_ipv6:
        assert facts.tunnel_subnet_v6 is not None
        v6 = client_address_v6(facts.tunnel_subnet, facts.tunnel_subnet_v6, row.tunnel_address)
        if v6 is not None:
            address_v6 = f"{v6}/128"
            dns.append(str(node_address_v6(facts.tunnel_subnet_v6).ip))
    return RouteResponse(
        session_id=row.id,
        expires_at=row.expires_at,
        ttl_s=ttl_s,
        node=RouteNode(node_id=facts.node_id, country=facts.country, region=facts.region),
        wireguard=WireGuardConfig(
            address=row.tunnel_address,
            address_v6=address_v6,
            node_public_key=facts.public_key,
            dns=dns,
            mtu=facts.tunnel_mtu,
            allowed_ips=list(ALLOWED_IPS),
            persistent_keepalive=KEEPALIVE_S,
        ),
        direct=(
            DirectPath(endpoint=facts.endpoint)
            if facts.endpoint and row.mode != RouteMode.RELAY
            else None
        ),
        relay=(
            RelayPath(url=f"{relay_base}{SESSION_RELAY_PATH}", token=token, channel=row.channel)
            if row.mode != RouteMode.DIRECT
            else None
        ),
        udp_relay=udp_relay,
    )


def session_info(row: SessionRow, counters: Counters) -> SessionInfo:
    datagrams, nbytes = counters(row.id)
    return SessionInfo(
        session_id=row.id,
        state=row.state,
        node_id=row.node_id,
        client_public_key=row.client_public_key,
        address=row.tunnel_address,
        channel=row.channel,
        mode=row.mode,
        created_at=row.created_at,
        expires_at=row.expires_at,
        closed_at=row.closed_at,
        close_reason=row.close_reason,
        relay_datagrams=datagrams,
        relay_bytes=nbytes,
    )


def admin_session_list(
    rows: Sequence[tuple[SessionRow, str]], counters: Counters
) -> AdminSessionList:
    """Sessions with their client's name (the admin API and ``bosonserver sessions``)."""
    return AdminSessionList(
        sessions=[
            AdminSession(**session_info(row, counters).model_dump(), client=name)
            for row, name in rows
        ]
    )
