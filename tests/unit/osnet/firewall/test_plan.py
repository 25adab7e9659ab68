"""Plans refuse values no backend could apply, naming the field; defaults match DESIGN.md §6."""

from __future__ import annotations

import ipaddress as ia

import pytest

from higgs.osnet.firewall.plan import (
    DnsRedirect,
    Endpoint,
    FirewallNames,
    FirewallPlanError,
    KillSwitchPolicy,
    NodePolicy,
    PortRule,
    protected_from,
)

KS = FirewallNames("higgsvpn", "HIGGSVPN", "higgs:client")


def node(**kw: object) -> NodePolicy:
    args: dict[str, object] = {
        "names": FirewallNames("higgsnode_n", "HIGGSNODE_N", "higgs:node:n"),
        "tunnel_if": "wg0",
        "tunnel_v4": ia.IPv4Interface("10.66.0.1/24"),
        "uplink_if": "eth0",
    }
    args.update(kw)
    return NodePolicy(**args)  # type: ignore[arg-type]


def test_defaults_protect_the_owner() -> None:
    plan = node()
    blocked = plan.blocked_v4
    for target in (
        "192.168.1.1",
        "10.1.2.3",
        "172.20.0.1",
        "100.64.1.1",
        "169.254.169.254",
        "127.0.0.1",
        "224.0.0.251",
        "255.255.255.255",
    ):
        assert any(ia.ip_address(target) in net for net in blocked), target
    assert not any(ia.ip_address("203.0.113.10") in net for net in blocked)
    assert any(ia.ip_address("fe80::1") in net for net in plan.blocked_v6)
    assert PortRule("tcp", 25) in plan.blocked_ports
    assert plan.ipv6_mode == "reject"
    assert plan.mss_clamp
    assert plan.per_client_conn_limit
    assert plan.per_client_new_conn_rate


def test_lan_and_own_addresses_join_the_block_list_merged() -> None:
    plan = node(
        block_ranges=(),
        lan_prefixes=(ia.ip_network("198.51.100.0/25"), ia.ip_network("198.51.100.128/25")),
        own_addresses=(ia.ip_address("203.0.113.9"), ia.ip_address("198.51.100.3")),
    )
    assert plan.blocked_v4 == (ia.ip_network("198.51.100.0/24"), ia.ip_network("203.0.113.9/32"))


def test_with_uplink_changes_only_the_uplink() -> None:
    plan = node(own_addresses=(ia.ip_address("203.0.113.9"),))
    moved = plan.with_uplink("eth1")
    assert moved.uplink_if == "eth1"
    assert moved.own_addresses == plan.own_addresses
    again = plan.with_uplink("eth1", (ia.ip_address("198.51.100.1"),))
    assert again.own_addresses == (ia.ip_address("198.51.100.1"),)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"tunnel_if": 'wg"0'}, "tunnel_if"),
        ({"tunnel_if": "a" * 16}, "tunnel_if"),
        ({"tunnel_if": "wg+"}, "tunnel_if"),
        ({"uplink_if": "-o"}, "uplink_if"),
        ({"uplink_if": "eth 0"}, "uplink_if"),
        ({"uplink_if": "wg0"}, "uplink_if"),
        ({"ipv6_mode": "nat66"}, "ipv6_mode"),
        ({"ipv6_mode": "nat64"}, "ipv6_mode"),
        ({"per_client_conn_limit": 0}, "per_client_conn_limit"),
        ({"per_client_new_conn_burst": 0}, "per_client_new_conn_burst"),
        (
            {"dns": DnsRedirect(ia.IPv4Address("10.66.0.1"), 53, ia.IPv6Address("fd66::1"))},
            r"dns\.address_v6",
        ),
    ],
)
def test_bad_node_values_name_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(FirewallPlanError, match=field):
        node(**kw)


def test_bad_ports_and_endpoints() -> None:
    with pytest.raises(FirewallPlanError, match="blocked_ports"):
        PortRule("tcp", 0)
    with pytest.raises(FirewallPlanError, match="blocked_ports"):
        PortRule("icmp", 1)  # type: ignore[arg-type]
    with pytest.raises(FirewallPlanError, match=r"dns\.port"):
        DnsRedirect(ia.IPv4Address("10.0.0.1"), 70000)
    with pytest.raises(FirewallPlanError, match="endpoints"):
        Endpoint(ia.ip_address("203.0.113.1"), 65536)


def test_kill_switch_validation() -> None:
    with pytest.raises(FirewallPlanError, match="fwmark"):
        KillSwitchPolicy(names=KS, tunnel_if="wg0", fwmark=0)
    with pytest.raises(FirewallPlanError, match="tunnel_if"):
        KillSwitchPolicy(names=KS, tunnel_if="")
    ks = KillSwitchPolicy(names=KS, tunnel_if="wg0")
    assert ks.block_ipv6_unless_tunnelled
    assert ks.allow_loopback
    assert not ks.allow_lan


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("Bad-Name", "HIGGS", "higgs:x"), "names.table"),
        (("higgs", "higgs", "higgs:x"), "names.chain_prefix"),
        (("higgs", "H" * 25, "higgs:x"), "names.chain_prefix"),
        (("higgs", "HIGGS", 'higgs "x'), "names.comment"),
    ],
)
def test_bad_names(args: tuple[str, str, str], field: str) -> None:
    with pytest.raises(FirewallPlanError, match=field.replace(".", r"\.")):
        FirewallNames(*args)


def test_names_from_an_owner() -> None:
    class Owned:
        nft_table = "higgsnode_ab"
        chain_prefix = "HIGGSNODE_AB"
        comment = "higgs:node:ab"

    names = FirewallNames.of(Owned())
    assert names.chain("FWD") == "HIGGSNODE_AB-FWD"
    assert names.table == "higgsnode_ab"
    ks = FirewallNames.of(Owned(), "ks")
    assert (ks.table, ks.chain("OUT"), ks.comment) == (
        "higgsnode_ab_ks",
        "HIGGSNODE_AB_KS-OUT",
        "higgs:node:ab:ks",
    )


def test_names_of_the_real_owner_fit() -> None:
    from higgs.osnet.names import OwnedNames

    # The longest instance allowed: the node's rules, and the client's kill switch kept apart
    # from whatever else the client puts in its own table.
    node = FirewallNames.of(OwnedNames.for_instance("node", "a" * 12))
    client = FirewallNames.of(OwnedNames.for_instance("client", "a" * 12), "ks")
    assert len(node.chain("FWD")) <= 28
    assert len(client.chain("OUT")) <= 28


def test_protected_from_interface_addresses() -> None:
    own, lan = protected_from(
        [
            ia.ip_interface("192.168.1.10/24"),
            ia.ip_interface("203.0.113.7/32"),
            ia.ip_interface("2001:db8:5::10/64"),
            ia.ip_interface("fe80::1/64"),
            ia.ip_interface("127.0.0.1/8"),
        ]
    )
    assert own == (
        ia.ip_address("192.168.1.10"),
        ia.ip_address("203.0.113.7"),
        ia.ip_address("2001:db8:5::10"),
        ia.ip_address("fe80::1"),
    )
    assert lan == (ia.ip_network("192.168.1.0/24"), ia.ip_network("2001:db8:5::/64"))
