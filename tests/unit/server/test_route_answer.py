"""The route answer, built from a session row and the node's facts: addresses, DNS, and the
paths the client asked for."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from higgs.server.services.answers import route_answer
from higgs.server.services.nodeview import NodeFacts
from higgs.server.store.tables import Session as SessionRow

NODE_ID = "n_0123456789abcdef"
SESSION_ID = "s_0123456789abcdef"
NODE_KEY = "k" * 43 + "="


def facts(**overrides: object) -> NodeFacts:
    values: dict[str, object] = {
        "node_id": NODE_ID,
        "state": "online",
        "public_key": NODE_KEY,
        "endpoint": "203.0.113.7:51820",
        "tunnel_subnet": "10.77.0.0/24",
        "tunnel_mtu": 1380,
        "max_clients": 8,
        "bandwidth_mbps": 50.0,
        "country": "DE",
        "region": "Berlin",
    }
    values.update(overrides)
    return NodeFacts(**values)  # type: ignore[arg-type]


def row(mode: str = "auto") -> SessionRow:
    return SessionRow(
        id=SESSION_ID,
        client_id=1,
        node_id=NODE_ID,
        client_public_key="c" * 43 + "=",
        tunnel_address="10.77.0.2/32",
        channel=42,
        relay_token_hash="h",
        mode=mode,
        state="open",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        expires_at=datetime(2026, 1, 1, 0, 10, tzinfo=UTC),
    )


def test_auto_gets_both_paths_and_the_nodes_dns() -> None:
    answer = route_answer(row(), facts(), "hgr_tok", ttl_s=600, relay_base="wss://r.example")
    assert answer.session_id == SESSION_ID
    assert answer.ttl_s == 600
    assert answer.node.model_dump() == {"node_id": NODE_ID, "country": "DE", "region": "Berlin"}
    wg = answer.wireguard
    assert (wg.address, wg.address_v6, wg.dns, wg.mtu) == (
        "10.77.0.2/32",
        None,
        ["10.77.0.1"],
        1380,
    )
    assert wg.node_public_key == NODE_KEY
    assert wg.allowed_ips == ["0.0.0.0/0", "::/0"]
    assert wg.persistent_keepalive == 25
    assert answer.direct is not None
    assert answer.direct.endpoint == "203.0.113.7:51820"
    assert answer.relay is not None
    assert (answer.relay.url, answer.relay.token, answer.relay.channel) == (
        "wss://r.example/v1/relay/session",
        "hgr_tok",
        42,
    )


@pytest.mark.parametrize(
    ("mode", "endpoint", "direct", "relay"),
    [
        ("relay", "203.0.113.7:51820", False, True),
        ("direct", "203.0.113.7:51820", True, False),
        ("auto", None, False, True),  # a node without an endpoint: relay only
    ],
)
def test_paths_follow_the_mode_and_the_endpoint(
    mode: str, endpoint: str | None, direct: bool, relay: bool
) -> None:
    answer = route_answer(row(mode), facts(endpoint=endpoint), "t", ttl_s=1, relay_base="ws://r")
    assert (answer.direct is not None, answer.relay is not None) == (direct, relay)


def test_ipv6_address_and_dns_when_the_node_forwards_ipv6() -> None:
    node = facts(tunnel_subnet_v6="fd77::/64")
    answer = route_answer(row(), node, "t", ttl_s=1, relay_base="ws://r")
    assert answer.wireguard.address_v6 == "fd77::2/128"
    assert answer.wireguard.dns == ["10.77.0.1", "fd77::1"]
    node.ipv6 = False  # the last heartbeat said the uplink lost IPv6
    answer = route_answer(row(), node, "t", ttl_s=1, relay_base="ws://r")
    assert answer.wireguard.address_v6 is None
    assert answer.wireguard.dns == ["10.77.0.1"]
