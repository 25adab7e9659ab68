"""The node's policy for IPv6: NAT66 with owner protection when the uplink has internet IPv6,
rejection otherwise (issue 6 item 5). Pure: settings and addresses in, firewall plan out, and
the plan rendered to the nft script the backend would apply."""

from __future__ import annotations

import ipaddress

import pytest

from higgs.common.errors import ConfigError
from higgs.node.policy import build_policy, lan_prefixes
from higgs.node.settings import default_subnet_v6, load_node_settings
from higgs.osnet.firewall.nft_render import render_node
from higgs.osnet.firewall.plan import FirewallNames, NodePolicy

NAMES = FirewallNames("higgs_t", "HIGGS_T", "higgs:t")
HOST = [
    ipaddress.ip_interface("127.0.0.1/8"),
    ipaddress.ip_interface("::1/128"),
    ipaddress.ip_interface("192.168.1.10/24"),
    ipaddress.ip_interface("2001:db8:1::10/64"),
    ipaddress.ip_interface("fe80::1234/64"),
]
TUN6 = ipaddress.IPv6Interface("fd12:3456:789a::1/64")


def _policy(tunnel_v6: ipaddress.IPv6Interface | None) -> NodePolicy:
    settings = load_node_settings(environ={})
    return build_policy(
        settings, names=NAMES, uplink="eth0", host_addresses=HOST, tunnel_v6=tunnel_v6
    )


def test_lan_prefixes_cover_the_owners_ipv6_lan_but_not_link_local_or_loopback() -> None:
    assert lan_prefixes(HOST) == (
        ipaddress.ip_network("192.168.1.0/24"),
        ipaddress.ip_network("2001:db8:1::/64"),
    )


def test_with_a_tunnel_v6_the_plan_is_nat66_with_ipv6_dns() -> None:
    plan = _policy(TUN6)
    assert plan.ipv6_mode == "nat66"
    assert plan.dns is not None
    assert plan.dns.address_v6 == TUN6.ip
    blocked = plan.blocked_v6
    for addr in ("2001:db8:1::20", "2001:db8:1::10", "fd00::1", "fe80::1", "ff02::1", "::1"):
        assert any(ipaddress.ip_address(addr) in n for n in blocked), addr
    # The internet stays reachable, and so does the node's own tunnel address (DNS, ping).
    assert not any(ipaddress.ip_address("2001:db8:0:2::10") in n for n in blocked)

    script = render_node(plan)
    assert 'oifname "eth0" ip6 saddr fd12:3456:789a::/64 masquerade' in script
    assert "dnat ip6 to [fd12:3456:789a::1]:53" in script
    assert "ip6 daddr fd12:3456:789a::1 meta l4proto { tcp, udp } th dport 53 accept" in script
    assert "meta nfproto ipv6 counter reject" not in script


def test_without_a_tunnel_v6_ipv6_from_clients_is_rejected_not_dropped() -> None:
    plan = _policy(None)
    assert plan.ipv6_mode == "reject"
    assert plan.dns is not None
    assert plan.dns.address_v6 is None
    script = render_node(plan)
    assert "meta nfproto ipv6 counter reject with icmpx type admin-prohibited" in script
    assert "ip6 saddr" not in script


def test_ipv6_setting_is_validated_by_name() -> None:
    assert load_node_settings(environ={}).ipv6 == "auto"
    assert load_node_settings(environ={"HIGGSNODE_IPV6": "off"}).ipv6 == "off"
    with pytest.raises(ConfigError, match="ipv6"):
        load_node_settings(environ={"HIGGSNODE_IPV6": "yes"})


@pytest.mark.parametrize("bad", ["2001:db8::/64", "fd00::/40", "fd00::/120", "10.0.0.0/8"])
def test_tunnel_subnet_v6_must_be_a_ula_of_sane_size(bad: str) -> None:
    with pytest.raises(ConfigError, match="tunnel_subnet_v6"):
        load_node_settings(overrides={"tunnel_subnet_v6": bad}, environ={})


def test_default_v6_prefix_is_a_stable_per_node_ula_64() -> None:
    a = default_subnet_v6("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=")
    b = default_subnet_v6("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=")
    assert a == default_subnet_v6("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=")
    assert a != b
    for net in (a, b):
        assert net.prefixlen == 64
        assert net.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    s = load_node_settings(overrides={"tunnel_subnet_v6": "fd01:2::/64"}, environ={})
    assert str(s.subnet_v6("any")) == "fd01:2::/64"
