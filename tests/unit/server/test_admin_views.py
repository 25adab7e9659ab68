"""The nodes page's "how reached" column: what the server knows of each way in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from higgs.protocol.api import AdminNode
from higgs.server.admin.views import _nodes, reached


def _node(**overrides: Any) -> AdminNode:
    values: dict[str, Any] = {
        "node_id": "n_0123456789abcdef", "public_key": "k", "state": "online",
        "connected": True, "endpoint": "198.51.100.7:51820", "listen_port": 51820,
        "tunnel_subnet": "10.77.0.0/24", "tunnel_mtu": 1420, "max_clients": 8,
        "bandwidth_mbps": None, "country": "DE", "region": "Berlin", "version": "0.1.0",
        "open_sessions": 0, "registered_at": datetime.now(UTC), "last_heartbeat_at": None,
        "metrics": {},
    }  # fmt: skip
    values.update(overrides)
    return AdminNode.model_validate(values)


MAPPING = {"method": "upnp", "external_endpoint": "203.0.113.4:51820"}


def test_each_way_in_is_named() -> None:
    assert reached(_node(connected=False)) == "direct 198.51.100.7:51820"
    assert reached(_node(connected=False, metrics={"port_mapping": MAPPING})) == (
        "port-mapped 203.0.113.4:51820 (upnp)"
    )
    assert reached(_node(endpoint=None)) == "relayed (link up)"
    assert reached(_node(endpoint=None, connected=False)) == "unreachable"


def test_hole_punched_comes_from_the_sessions_on_a_punched_path() -> None:
    behind_nat = _node(endpoint=None)
    assert reached(behind_nat, ["punched"]) == "hole-punched (1 session) · relayed (link up)"
    assert reached(behind_nat, ["punched", "punched", "udp_relay"]) == (
        "hole-punched (2 sessions) · relayed (1 session, link up)"
    )
    # Relayed sessions on either relay count as relayed; a direct one adds nothing new.
    assert reached(behind_nat, ["ws_relay", "udp_relay_pending"]) == (
        "relayed (2 sessions, link up)"
    )
    assert reached(_node(connected=False), ["direct", "punched"]) == (
        "direct 198.51.100.7:51820 · hole-punched (1 session)"
    )
    # A heartbeat fact of that name proves nothing (no node reports it): sessions decide.
    assert "hole-punched" not in reached(_node(metrics={"hole_punched": True}))


def test_the_nodes_table_gives_each_node_its_own_sessions_paths() -> None:
    a, b = _node(node_id="n_000000000000000a"), _node(node_id="n_000000000000000b", endpoint=None)
    data = _nodes(None, [a, b], {"n_000000000000000b": ["punched"]})  # type: ignore[arg-type]
    rows = data["tables"]["nodes"]["rows"]
    assert rows[0][6] == "direct 198.51.100.7:51820 · relayed (link up)"
    assert rows[1][6] == "hole-punched (1 session) · relayed (link up)"
