"""Uplink discovery, routes and policy rules in a throwaway namespace (root)."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from higgs.osnet import routes, sysctl
from higgs.osnet.discovery import Uplink, UplinkWatcher, default_uplink
from higgs.osnet.errors import DiscoveryError
from higgs.osnet.journal import Journal
from higgs.osnet.names import OwnedNames
from higgs.osnet.routes import Route, Rule

from .conftest import Namespaces, sh, veth

pytestmark = pytest.mark.root


@pytest.fixture
def two_uplinks(namespaces: Namespaces) -> tuple[str, str]:
    """ns "a" has `up-link.1` (10.0.1.2/24, fd01::2/64) and `wan-2` (10.0.2.2/24), each a veth
    into ns "b"; no default route yet."""
    a, b = namespaces.new("a"), namespaces.new("b")
    veth(a, "up-link.1", b, "p1")
    veth(a, "wan-2", b, "p2")
    sh("ip", "-n", a, "addr", "add", "10.0.1.2/24", "dev", "up-link.1")
    sh("ip", "-n", a, "addr", "add", "fd01::2/64", "dev", "up-link.1", "nodad")
    sh("ip", "-n", a, "addr", "add", "10.0.2.2/24", "dev", "wan-2")
    sh("ip", "-n", a, "link", "set", "up-link.1", "mtu", "1420")
    return a, b


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.json") as j:
        yield j


def test_lowest_metric_default_route_wins_and_names_keep_dots(
    two_uplinks: tuple[str, str],
) -> None:
    a, _ = two_uplinks
    with pytest.raises(DiscoveryError, match="no IPv4 default route"):
        default_uplink(netns=a)
    sh("ip", "-n", a, "route", "add", "default", "via", "10.0.2.1", "dev", "wan-2", "metric", "100")
    sh("ip", "-n", a, "route", "add", "default", "via", "10.0.1.1", "dev", "up-link.1",
       "metric", "50")  # fmt: skip
    up = default_uplink(netns=a)
    assert (up.name, up.gateway, up.metric, up.mtu) == ("up-link.1", "10.0.1.1", 50, 1420)
    assert up.address == ipaddress.ip_interface("10.0.1.2/24")
    assert ipaddress.ip_interface("fd01::2/64") in up.global_addresses(6)
    # Our own interface is never the uplink.
    assert default_uplink(netns=a, exclude=["up-link.1"]).name == "wan-2"
    sh("ip", "-n", a, "route", "del", "default", "via", "10.0.1.1", "dev", "up-link.1")
    assert default_uplink(netns=a).name == "wan-2"


def test_multipath_default_route_counts_by_its_first_hop(two_uplinks: tuple[str, str]) -> None:
    a, _ = two_uplinks
    sh("ip", "-n", a, "route", "add", "default",
       "nexthop", "via", "10.0.2.1", "dev", "wan-2",
       "nexthop", "via", "10.0.1.1", "dev", "up-link.1")  # fmt: skip
    up = default_uplink(netns=a)
    assert (up.name, up.gateway) == ("wan-2", "10.0.2.1")


def test_ipv6_default_route(two_uplinks: tuple[str, str]) -> None:
    a, _ = two_uplinks
    sh("ip", "-n", a, "-6", "route", "add", "default", "via", "fd01::1", "dev", "up-link.1")
    up = default_uplink(6, netns=a)
    assert (up.name, up.gateway, up.family) == ("up-link.1", "fd01::1", 6)
    assert up.address == ipaddress.ip_interface("fd01::2/64")


async def test_watcher_reports_the_default_route_moving(two_uplinks: tuple[str, str]) -> None:
    a, _ = two_uplinks
    sh("ip", "-n", a, "route", "add", "default", "via", "10.0.1.1", "dev", "up-link.1")
    seen: list[tuple[str | None, str | None]] = []

    def on_change(old: Uplink | None, new: Uplink | None) -> None:
        seen.append((old.name if old else None, new.name if new else None))

    watcher = UplinkWatcher(on_change, netns=a)
    assert (await watcher.prime()) is not None
    assert not await watcher.poll_once()  # nothing changed
    sh("ip", "-n", a, "route", "replace", "default", "via", "10.0.2.1", "dev", "wan-2")
    assert await watcher.poll_once()
    sh("ip", "-n", a, "addr", "add", "10.0.2.3/24", "dev", "wan-2")
    assert await watcher.poll_once()  # an address change is a change too
    sh("ip", "-n", a, "route", "del", "default")
    assert await watcher.poll_once()
    assert seen == [("up-link.1", "wan-2"), ("wan-2", "wan-2"), ("wan-2", None)]


def test_routes_are_journaled_and_only_ours_are_undone(
    two_uplinks: tuple[str, str], journal: Journal
) -> None:
    a, _ = two_uplinks
    sh("ip", "-n", a, "route", "add", "10.60.0.0/16", "via", "10.0.1.1")  # not ours
    mine = Route("10.50.0.0/16", dev="wan-2", gateway="10.0.2.1")
    theirs = Route("10.60.0.0/16", dev="up-link.1", gateway="10.0.1.1")
    in_table = Route("0.0.0.0/0", dev="wan-2", table=0x68671234)
    assert routes.add_route(journal, mine, netns=a)
    assert not routes.add_route(journal, mine, netns=a)  # already there: not journaled twice
    assert not routes.add_route(journal, theirs, netns=a)
    assert routes.add_route(journal, in_table, netns=a)
    assert routes.route_get("10.50.1.1", netns=a) == "wan-2"
    assert routes.routes_in_table(0x68671234, netns=a) == [in_table]
    assert [e.what for e in journal.entries] == [
        "route 10.50.0.0/16 via 10.0.2.1 dev wan-2",
        "route 0.0.0.0/0 dev wan-2 table 1751585332",
    ]
    journal.undo_all()
    main = sh("ip", "-n", a, "route", "show")
    assert "10.50.0.0/16" not in main
    assert "10.60.0.0/16 via 10.0.1.1" in main
    assert routes.routes_in_table(0x68671234, netns=a) == []


def test_full_tunnel_rules_like_wg_quick_and_undo(
    two_uplinks: tuple[str, str], journal: Journal
) -> None:
    a, _ = two_uplinks
    names = OwnedNames.for_instance("client", "t1", interface="wan-2")
    before_rules = sh("ip", "-n", a, "rule", "show")
    before_mark = sysctl.read("net.ipv4.conf.all.src_valid_mark", runner=journal.runner, netns=a)
    routes.full_tunnel(journal, names, families=(4,), netns=a)
    rules = sh("ip", "-n", a, "rule", "show")
    p = names.rule_priority
    assert f"{p}:\tfrom all lookup main suppress_prefixlength 0" in rules
    assert f"{p + 1}:\tnot from all fwmark {names.fwmark:#x} lookup {names.table_id}" in rules
    assert sysctl.read("net.ipv4.conf.all.src_valid_mark", runner=journal.runner, netns=a) == "1"
    assert Rule(p + 1, names.table_id, 4, names.fwmark, invert=True) in routes.list_rules(netns=a)
    # Everything unmarked now leaves through the tunnel interface, even to "the internet".
    assert routes.route_get("198.51.100.7", netns=a) == "wan-2"
    journal.undo_all()
    assert sh("ip", "-n", a, "rule", "show") == before_rules
    assert (
        sysctl.read("net.ipv4.conf.all.src_valid_mark", runner=journal.runner, netns=a)
        == before_mark
    )


def test_hoststate_sees_configuration_not_traffic(namespaces: Namespaces) -> None:
    from higgs.osnet import hoststate

    ns = namespaces.new("h")
    sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "hgtest")
    sh("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "hgtest", "out",
       "{ type filter hook output priority 0; }")  # fmt: skip
    sh("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "hgtest", "out", "udp", "dport",
       "9", "counter")  # fmt: skip
    before = hoststate.snapshot(netns=ns)
    assert "\t\tudp dport 9 counter" in before.sections["nft"]
    # Traffic moves the counter; the snapshot does not change.
    sh("ip", "netns", "exec", ns, sys.executable, "-c",
       "import socket; socket.socket(2, 2).sendto(b'x', ('127.0.0.1', 9))")  # fmt: skip
    assert "packets 1" in sh("ip", "netns", "exec", ns, "nft", "list", "ruleset")
    assert hoststate.snapshot(netns=ns) == before
    # A configuration change does.
    sh("ip", "-n", ns, "rule", "add", "fwmark", "0x1", "table", "100", "priority", "100")
    after = hoststate.snapshot(netns=ns)
    assert after != before
    assert "100:\tfrom all fwmark 0x1 lookup 100" in before.diff(after)
