"""The client's kill switch in a namespace, for each backend: only the tunnel and the allowed
endpoints get through; IPv6 is blocked; a container behind the client gets out through the
tunnel only; removal gives everything back."""

from __future__ import annotations

import ipaddress as ia
import re
from collections.abc import Callable

import pytest

from higgs.osnet.firewall import (
    Endpoint,
    FirewallBackend,
    FirewallNames,
    KillSwitchPolicy,
    other_filters,
)
from higgs.osnet.runner import SubprocessRunner

from .conftest import KillWorld, make_backend, ruleset

pytestmark = pytest.mark.root

Register = Callable[[FirewallBackend], FirewallBackend]


PROBES = {
    "endpoint tcp 443": "tcp:203.0.113.5:443",
    "endpoint udp 51820": "udp:203.0.113.5:51820",
    "endpoint other port": "tcp:203.0.113.5:80",
    "other host": "tcp:203.0.113.6:80",
    "through tunnel": "tcp:10.99.0.1:80",
    "ipv6 outside": "tcp:2001:db8:51::1:80",
    "loopback": "tcp:127.0.0.1:9",
}


# From the container behind the client (its traffic is forwarded, not the client's own).
BOX_PROBES = {
    "box: other host": "tcp:203.0.113.6:80",
    "box: endpoint": "tcp:203.0.113.5:443",
    "box: through tunnel": "tcp:10.99.0.1:80",
}


def reachable(kw: KillWorld) -> dict[str, bool]:
    got = kw.client.probe(*PROBES.values())
    box = kw.container.probe(*BOX_PROBES.values())
    return {k: not got[v].startswith("ERR") for k, v in PROBES.items()} | {
        k: not box[v].startswith("ERR") for k, v in BOX_PROBES.items()
    }


def test_kill_switch(
    kill_world: KillWorld, kind: str, fw_names: FirewallNames, register: Register
) -> None:
    everything = dict.fromkeys([*PROBES, *BOX_PROBES], True)
    assert reachable(kill_world) == everything  # the probes can fail
    before = ruleset(kind, kill_world.client)

    backend = register(make_backend(kind, fw_names, kill_world.client))
    backend.apply(
        KillSwitchPolicy(
            names=fw_names,
            tunnel_if="kt0",
            endpoints=(
                Endpoint(ia.ip_address("203.0.113.5"), 443, "tcp"),
                Endpoint(ia.ip_address("203.0.113.5"), 51820, "udp"),
            ),
        )
    )
    assert reachable(kill_world) == {
        "endpoint tcp 443": True,
        "endpoint udp 51820": True,
        "endpoint other port": False,
        "other host": False,
        "through tunnel": True,
        "ipv6 outside": False,
        "loopback": True,
        # Forwarded traffic: the tunnel only — not even the client's own endpoint.
        "box: other host": False,
        "box: endpoint": False,
        "box: through tunnel": True,
    }
    # Refused at once (no waiting for a timeout): applications fail fast.
    assert kill_world.client.ask1("tcp", "203.0.113.6", 80) != "ERR timeout"
    assert backend.status().kill_switch

    backend.remove()
    assert ruleset(kind, kill_world.client) == before
    assert reachable(kill_world) == everything


WG_PORT, MARK = 41414, 0xCA6C


def _counter(kw: KillWorld, table: str, chain: str) -> int:
    listing = kw.client.run("nft", "list", "chain", "inet", table, chain).stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))


def test_wireguard_datagrams_bypass_conntrack_and_nothing_else_gets_out(
    kill_world: KillWorld, fw_names: FirewallNames, register: Register
) -> None:
    """nftables: WireGuard's own datagrams (its port and fwmark, to and from its endpoint)
    pass untracked; other traffic to the endpoint is tracked as before; everything outside
    the tunnel is still refused, and the tunnel still carries traffic."""
    kw = kill_world
    backend = register(make_backend("nft", fw_names, kw.client))
    backend.apply(
        KillSwitchPolicy(
            names=fw_names,
            tunnel_if="kt0",
            endpoints=(Endpoint(ia.ip_address("203.0.113.5"), 51820, "udp"),),
            fwmark=MARK,
            wg_listen_port=WG_PORT,
        )
    )
    kw.client.run("conntrack", "-F", check=False)
    # WireGuard's datagram gets its answer, and conntrack never saw either direction.
    assert kw.client.dgram(str(WG_PORT), MARK, "203.0.113.5", 51820).startswith("world ")
    tracked = kw.client.run("conntrack", "-L", "-p", "udp").stdout
    assert f"sport={WG_PORT}" not in tracked, tracked
    assert f"dport={WG_PORT}" not in tracked, tracked
    # Another socket to the same endpoint: answered as before, through conntrack.
    assert kw.client.dgram("41415", 0, "203.0.113.5", 51820).startswith("world ")
    assert "sport=41415" in kw.client.run("conntrack", "-L", "-p", "udp").stdout
    # Still refused outside the tunnel: WireGuard's port without its mark to another host,
    # any other host, the endpoint's other ports; the tunnel itself works.
    assert kw.client.dgram(str(WG_PORT), 0, "203.0.113.6", 51820).startswith("ERR")
    got = reachable(kw)
    assert not got["other host"]
    assert not got["endpoint other port"]
    assert not got["ipv6 outside"]
    assert not got["box: other host"]
    assert got["through tunnel"]
    assert got["box: through tunnel"]
    # An unsolicited datagram to WireGuard's port from another host is dropped on input.
    dropped = _counter(kw, fw_names.table, "input")
    kw.net.dgram("203.0.113.6:51820", 0, "198.51.100.2", WG_PORT)
    assert _counter(kw, fw_names.table, "input") > dropped
    backend.remove()


def test_other_filters_are_seen_so_wireguard_stays_tracked_there(
    kill_world: KillWorld, fw_names: FirewallNames, register: Register
) -> None:
    """A host firewall that lets answers in by `ct state` (ufw, firewalld) would drop
    untracked datagrams: the client leaves them tracked when another filter is there."""
    kw = kill_world
    runner = SubprocessRunner(netns=kw.client.name)
    backend = register(make_backend("nft", fw_names, kw.client))
    backend.apply(KillSwitchPolicy(names=fw_names, tunnel_if="kt0"))
    # Ours and the container's NAT table are not someone else's filter (the iptables
    # variants before this test may have left their empty tables and chains: those count).
    before = other_filters(runner, fw_names.table)
    assert not [f for f in before if fw_names.table in f or "hgtest_box" in f], before
    kw.client.run("nft", "-f", "-", input=(
        "table inet hgtest_ufw {\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        "\t\tct state established,related accept\n"
        "\t}\n"
        "}\n"
    ))  # fmt: skip
    try:
        assert set(other_filters(runner, fw_names.table)) == {*before, "inet hgtest_ufw input"}
    finally:
        kw.client.run("nft", "delete", "table", "inet", "hgtest_ufw")
    backend.remove()
