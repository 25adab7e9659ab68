"""The owner's per-client connection limits, from the settings into the firewall plan."""

from __future__ import annotations

import ipaddress

import pytest

from higgs.common.errors import ConfigError
from higgs.node.policy import build_policy
from higgs.node.settings import load_node_settings
from higgs.osnet.firewall.nft_render import render_node
from higgs.osnet.firewall.plan import FirewallNames, NodePolicy

NAMES = FirewallNames("higgs_node_t", "HGN_T", "higgs:node:t")
HOST = [ipaddress.ip_interface("192.168.1.10/24")]


def policy(**limits: object) -> NodePolicy:
    s = load_node_settings(environ={}, overrides={"limits": limits})
    return build_policy(s, names=NAMES, uplink="eth0", host_addresses=HOST)


def test_limits_are_on_by_default() -> None:
    p = policy()
    assert (p.per_client_conn_limit, p.per_client_new_conn_rate) == (512, 50)
    assert p.per_client_new_conn_burst == 100


def test_configured_limits_reach_the_rules() -> None:
    p = policy(connections_per_client=8, new_connections_per_s=5, new_connections_burst=5)
    rules = render_node(p)
    assert "ip saddr ct count over 8 }" in rules
    assert "ip saddr limit rate over 5/second burst 5 packets }" in rules


def test_zero_means_unlimited() -> None:
    p = policy(connections_per_client=0, new_connections_per_s=0)
    assert (p.per_client_conn_limit, p.per_client_new_conn_rate) == (None, None)
    rules = render_node(p)
    assert "ct count" not in rules
    assert "limit rate" not in rules


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"connections_per_client": -1}, "limits.connections_per_client"),
        ({"new_connections_per_s": "many"}, "limits.new_connections_per_s"),
        ({"new_connections_burst": 0}, "limits.new_connections_burst"),
        ({"per_second": 5}, "limits.per_second"),
    ],
)
def test_bad_limits_name_the_field(limits: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"field '{field}'"):
        load_node_settings(environ={}, overrides={"limits": limits})
