from __future__ import annotations

from ipaddress import IPv4Network, ip_network

import pytest

from higgs.lab.plan import HOST_ROLES, default_plan

DOC_RANGES = [ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
PUBLIC_ROLES = ("core", "internet", "server")


def test_every_role_has_a_host_and_every_link_end_exists() -> None:
    plan = default_plan()
    assert set(plan.hosts) == set(HOST_ROLES)
    for cable in plan.cables:
        assert cable.a in plan.hosts
        assert cable.b in plan.hosts


def test_public_side_uses_documentation_ranges_only() -> None:
    plan = default_plan()
    for role in PUBLIC_ROLES:
        for _, addr in plan.host(role).addresses:
            assert any(addr.ip in net for net in DOC_RANGES), (role, addr)
    for role in ("home_router", "client_router"):
        wan = plan.host(role).address("wan0")
        assert any(wan.ip in net for net in DOC_RANGES)


def test_lans_are_private_and_distinct() -> None:
    plan = default_plan()
    home = IPv4Network(plan.host("home_router").lan_net or "")
    office = IPv4Network(plan.host("client_router").lan_net or "")
    assert home.is_private
    assert office.is_private
    assert not home.overlaps(office)
    assert plan.host("node").address().ip in home
    assert plan.host("printer").address().ip in home
    assert plan.host("client").address().ip in office


def test_every_gateway_is_on_link() -> None:
    plan = default_plan()
    for role, host in plan.hosts.items():
        if host.gateway is None:
            continue
        assert any(host.gateway in addr.network for _, addr in host.addresses), role


def test_no_address_is_used_twice() -> None:
    plan = default_plan()
    ips = [addr.ip for host in plan.hosts.values() for _, addr in host.addresses]
    assert len(ips) == len(set(ips))


def test_unknown_host_and_interface_are_named_in_the_error() -> None:
    plan = default_plan()
    with pytest.raises(KeyError, match="nas"):
        plan.host("nas")
    with pytest.raises(KeyError, match="wlan0"):
        plan.host("node").address("wlan0")
