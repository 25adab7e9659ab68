"""REST models: what they accept, normalise and reject (docs/protocol.md §2)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from higgs.common.keys import PrivateKey
from higgs.protocol.api import (
    CLOSE_REASONS,
    HeartbeatRequest,
    NodeRegisterRequest,
    RouteRequest,
    RouteResponse,
    parse_endpoint,
)

KEY = PrivateKey.generate().public_b64()


def register(**kw: Any) -> NodeRegisterRequest:
    body: dict[str, Any] = {"public_key": KEY, "listen_port": 51820, "tunnel_subnet": "10.7.0.0/24"}
    body.update(kw)
    return NodeRegisterRequest.model_validate(body)


def test_register_defaults_and_normalisation() -> None:
    req = register(country="de", future_field="ignored")
    assert req.country == "DE"
    assert req.tunnel_mtu == 1380
    assert req.max_clients == 32
    assert req.endpoint is None


@pytest.mark.parametrize(
    "endpoint", ["203.0.113.7:51820", "node.example.org:1", "[2001:db8::1]:51820"]
)
def test_good_endpoints(endpoint: str) -> None:
    assert register(endpoint=endpoint).endpoint == endpoint


@pytest.mark.parametrize(
    "endpoint",
    ["203.0.113.7", ":51820", "1.2.3.4:0", "1.2.3.4:65536", "[::1]51820", "a b:1", "999.1.1.1:5"],
)
def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(ValidationError, match="endpoint"):
        register(endpoint=endpoint)
    with pytest.raises(ValueError, match=r"endpoint|IPv6|address"):
        parse_endpoint(endpoint)


@pytest.mark.parametrize(
    "subnet", ["10.7.0.1/24", "10.0.0.0/8", "10.7.0.0/30", "1.2.3.0/24", "fd00::/64", "x"]
)
def test_bad_subnets(subnet: str) -> None:
    with pytest.raises(ValidationError, match="tunnel_subnet"):
        register(tunnel_subnet=subnet)


def test_cgnat_subnet_is_allowed() -> None:
    assert register(tunnel_subnet="100.64.7.0/24").tunnel_subnet == "100.64.7.0/24"


def test_public_key_is_canonicalised_and_checked() -> None:
    with pytest.raises(ValidationError, match="at least 44 characters"):
        RouteRequest.model_validate({"client_public_key": "AAAA"})
    with pytest.raises(ValidationError, match="pattern"):
        RouteRequest.model_validate({"client_public_key": "!" * 43 + "="})
    # Non-canonical: the last character carries padding bits that must be zero.
    with pytest.raises(ValidationError, match="pattern"):
        RouteRequest.model_validate({"client_public_key": KEY[:42] + "B="})
    assert RouteRequest.model_validate({"client_public_key": KEY}).mode == "auto"


def test_heartbeat_bounds() -> None:
    assert HeartbeatRequest.model_validate({}).peer_stats == []
    with pytest.raises(ValidationError, match="cpu_percent"):
        HeartbeatRequest.model_validate({"cpu_percent": 101})


def test_route_response_round_trip() -> None:
    data = {
        "session_id": "s_0123456789abcdef",
        "expires_at": "2026-01-01T00:10:00Z",
        "ttl_s": 600,
        "node": {"node_id": "n_0123456789abcdef", "country": "DE", "region": None},
        "wireguard": {
            "address": "10.7.0.2/32",
            "node_public_key": KEY,
            "dns": ["10.7.0.1"],
            "mtu": 1380,
            "allowed_ips": ["0.0.0.0/0", "::/0"],
            "persistent_keepalive": 25,
        },
        "direct": None,
        "relay": {"url": "ws://127.0.0.1:8081/v1/relay/session", "token": "hgr_x", "channel": 17},
    }
    parsed = RouteResponse.model_validate(data)
    assert RouteResponse.model_validate_json(parsed.model_dump_json()) == parsed
    assert "replaced" in CLOSE_REASONS


def test_client_ipv6_address_takes_the_ipv4_host_number() -> None:
    from higgs.protocol.api import client_address_v6, node_address_v6

    assert str(client_address_v6("10.77.0.0/24", "fd00:1::/64", "10.77.0.5/32")) == "fd00:1::5"
    assert str(client_address_v6("10.77.0.0/16", "fd00:1::/112", "10.77.3.4")) == "fd00:1::304"
    assert client_address_v6("10.77.0.0/24", "fd00:1::/64", "10.78.0.5/32") is None
    assert client_address_v6("10.77.0.0/24", "fd00:1::/64", "10.77.0.1/32") is None  # the node
    assert str(node_address_v6("fd00:1::/64")) == "fd00:1::1/64"


@pytest.mark.parametrize("subnet", ["2001:db8::/64", "fd00::/40", "fd00::/120", "fd00::1/64"])
def test_bad_ipv6_subnets(subnet: str) -> None:
    with pytest.raises(ValidationError, match="tunnel_subnet_v6"):
        register(tunnel_subnet_v6=subnet)


def test_route_answer_without_ipv6_fields_still_parses() -> None:
    """An older server's answer (no address_v6) is valid: the client keeps IPv4 only."""
    from higgs.protocol.api import WireGuardConfig

    wg = {
        "address": "10.77.0.5/32",
        "node_public_key": KEY,
        "dns": ["10.77.0.1"],
        "mtu": 1380,
        "allowed_ips": ["0.0.0.0/0", "::/0"],
        "persistent_keepalive": 25,
    }

    assert WireGuardConfig.model_validate(wg).address_v6 is None
    assert register().tunnel_subnet_v6 is None
    assert HeartbeatRequest.model_validate({}).ipv6 is None
