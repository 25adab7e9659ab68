"""The owner's exceptions to owner protection, from the settings into the firewall plan."""

from __future__ import annotations

import ipaddress

import pytest

from higgs.common.errors import ConfigError
from higgs.node.policy import build_policy
from higgs.node.settings import load_node_settings
from higgs.osnet.firewall.nft_render import render_node
from higgs.osnet.firewall.plan import FirewallNames, NodePolicy, PortRule

NAMES = FirewallNames("higgs_node_t", "HGN_T", "higgs:node:t")
HOST = [ipaddress.ip_interface("192.168.1.10/24")]


def policy(**protection: object) -> NodePolicy:
    s = load_node_settings(environ={}, overrides={"protection": protection})
    return build_policy(s, names=NAMES, uplink="eth0", host_addresses=HOST)


def test_by_default_nothing_is_excepted_and_smtp_is_blocked() -> None:
    p = policy()
    assert p.allow_list == ()
    assert p.blocked_ports == (PortRule("tcp", 25),)
    assert ipaddress.ip_network("192.168.1.0/24") in p.lan_prefixes


def test_an_allowed_printer_reaches_the_rules_and_the_lan_stays_blocked() -> None:
    p = policy(allow=["192.168.1.20/32"], blocked_tcp_ports=[587], blocked_udp_ports=[5060])
    assert p.allow_v4 == (ipaddress.IPv4Network("192.168.1.20/32"),)
    assert set(p.blocked_ports) == {PortRule("tcp", 587), PortRule("udp", 5060)}
    rules = render_node(p)
    assert "192.168.1.20" in rules
    lan = ipaddress.IPv4Network("192.168.1.0/24")
    assert any(lan.subnet_of(n) for n in p.blocked_v4), "the rest of the LAN is still blocked"
    assert "dport 25 " not in rules


@pytest.mark.parametrize(
    ("protection", "field"),
    [
        ({"allow": ["printer"]}, "protection.allow"),
        ({"blocked_tcp_ports": [0]}, "protection.blocked_tcp_ports"),
        ({"blocked_udp_ports": [70000]}, "protection.blocked_udp_ports"),
        ({"allow_all": True}, "protection.allow_all"),
    ],
)
def test_bad_values_name_the_field(protection: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"field '{field}"):
        load_node_settings(environ={}, overrides={"protection": protection})
