"""Does the host have internet IPv6? (the node's NAT66 switch), in a throwaway namespace."""

from __future__ import annotations

import ipaddress

import pytest

from higgs.osnet.discovery import internet_v6, ipv6_uplink

from .conftest import Namespaces, sh, veth

pytestmark = pytest.mark.root


def test_internet_v6_ignores_ula_link_local_and_loopback() -> None:
    addrs = [
        ipaddress.ip_interface(a)
        for a in ("10.0.0.2/24", "fd01::2/64", "fe80::1/64", "::1/128", "2001:db8:1::10/64")
    ]
    assert internet_v6(addrs) == (ipaddress.IPv6Interface("2001:db8:1::10/64"),)


def test_ipv6_uplink_needs_a_default_route_and_an_internet_address(
    namespaces: Namespaces,
) -> None:
    a, b = namespaces.new("a"), namespaces.new("b")
    veth(a, "up0", b, "p0")
    sh("ip", "-n", a, "addr", "add", "fd01::2/64", "dev", "up0", "nodad")
    # Only a ULA: a default route alone is not internet IPv6.
    sh("ip", "-n", a, "-6", "route", "add", "default", "via", "fd01::1", "dev", "up0")
    assert ipv6_uplink(netns=a) is None
    sh("ip", "-n", a, "addr", "add", "2001:db8:1::10/64", "dev", "up0", "nodad")
    up = ipv6_uplink(netns=a)
    assert up is not None
    assert up.name == "up0"
    assert ipv6_uplink(netns=a, exclude=["up0"]) is None
    # A global address without a default route: no internet IPv6 either.
    sh("ip", "-n", a, "-6", "route", "del", "default", "via", "fd01::1", "dev", "up0")
    assert ipv6_uplink(netns=a) is None
