"""The lab's opt-in IPv6: global 2001:db8::/32 on the public side and on both LANs (routed),
IPv4 unchanged."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from higgs.lab.lab import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def lab6() -> Iterator[Lab]:
    """One IPv6 lab for the module: its tests only look at it."""
    lab = Lab(ipv6=True).build()
    try:
        yield lab
    finally:
        lab.teardown()
    assert not lab.leftovers()


def test_both_sites_reach_the_internet_over_ipv6_with_their_own_addresses(lab6: Lab) -> None:
    lab = lab6
    # Routed, not NATed: the internet host sees each host's own global address.
    assert lab.whoami(lab.node, ipv6=True)["ip"] == lab.node.ip6 == "2001:db8:1::10"
    assert lab.whoami(lab.client, ipv6=True)["ip"] == lab.client.ip6 == "2001:db8:2::10"
    # IPv4 is exactly as without IPv6.
    assert lab.whoami(lab.node)["ip"] == lab.home_router.ip
    assert lab.whoami(lab.client)["ip"] == lab.client_router.ip


def test_the_home_lan_prefix_is_global_and_the_dns_server_has_aaaa(lab6: Lab) -> None:
    lab = lab6
    assert lab.home_router.addr6("lan0") == "2001:db8:1::1"
    lab.client.run(["ping", "-6", "-c", "1", "-W", "2", lab.printer.ip6])
    aaaa = lab.client.run(
        [sys.executable, "-c",
         "import dns.resolver as r; x=r.Resolver(configure=False);"
         f"x.nameservers=['{lab.internet.ip6}'];"
         "print(x.resolve('www.example.test','AAAA')[0])"],
    )  # fmt: skip
    assert aaaa.stdout.strip() == lab.internet.ip6


def test_without_ipv6_hosts_have_none() -> None:
    lab = Lab(services=False)
    with pytest.raises(KeyError, match="ipv6=True"):
        _ = lab.node.ip6
