"""The node's firewall in a namespace topology, for each backend: what a client can and cannot
reach through the node, as seen by the hosts at the far end."""

from __future__ import annotations

import ipaddress as ia
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from higgs.osnet.firewall import (
    KILL_SWITCH_PART,
    DnsRedirect,
    FirewallBackend,
    FirewallNames,
    IptablesBackend,
    KillSwitchPolicy,
    NftBackend,
    NodePolicy,
    get_backend,
    sweep,
)
from higgs.osnet.firewall.plan import DEFAULT_BLOCK_RANGES
from higgs.osnet.journal import Journal
from higgs.osnet.names import OwnedNames
from higgs.osnet.runner import SubprocessRunner

from .conftest import NodeWorld, make_backend, ruleset
from .netns import Netns, unique

pytestmark = pytest.mark.root

Register = Callable[[FirewallBackend], FirewallBackend]


def plan_for(names: FirewallNames, **kw: object) -> NodePolicy:
    args: dict[str, object] = {
        "names": names,
        "tunnel_if": "t0",
        "tunnel_v4": ia.IPv4Interface("10.66.0.1/24"),
        "uplink_if": "u0",
        "own_addresses": (
            ia.ip_address("203.0.113.2"),
            ia.ip_address("198.51.100.2"),
            ia.ip_address("192.168.77.1"),
        ),
        "lan_prefixes": (ia.ip_network("192.168.77.0/24"),),
        "dns": DnsRedirect(ia.IPv4Address("10.66.0.1"), 5353),
    }
    args.update(kw)
    return NodePolicy(**args)  # type: ignore[arg-type]


def ok_from(answer: str) -> str:
    """The peer address the far end saw, failing the test with the error otherwise."""
    assert not answer.startswith("ERR"), answer
    return answer.split()[1]


def test_node_policy_end_to_end(
    node_world: NodeWorld, kind: str, fw_names: FirewallNames, register: Register
) -> None:
    w = node_world
    cli = w.client
    # Without our rules the tunnel side reaches the owner's LAN and the node itself: the
    # checks below can fail.
    assert ok_from(cli.ask1("tcp", "192.168.77.50", 80)) == "10.66.0.2"
    assert cli.ask1("tcp", "10.66.0.1", 8080).startswith("node ")

    before = ruleset(kind, w.node)
    backend = register(make_backend(kind, fw_names, w.node))
    backend.apply(plan_for(fw_names))

    # Owner protection: LAN, private and link-local ranges, the node's own addresses.
    protected = [
        "tcp:192.168.77.50:80", "tcp:10.200.0.1:80", "tcp:169.254.169.254:80",
        "tcp:203.0.113.2:8080", "tcp:10.66.0.1:8080", "tcp:192.168.77.1:8080",
    ]  # fmt: skip
    got = cli.probe(
        "tcp:192.0.2.1:80", "tcp:192.0.2.1:587", "tcp:192.0.2.1:25",
        "udp:192.0.2.1:53", "udp:203.0.113.10:53", "tcp:192.0.2.1:53",
        "tcp:192.0.2.2:80", "tcp:2001:db8:192::1:80", *protected,
    )  # fmt: skip
    # Out to the internet with the uplink's address; answers come back.
    assert ok_from(got["tcp:192.0.2.1:80"]) == "203.0.113.2"
    assert ok_from(got["tcp:192.0.2.1:587"]) == "203.0.113.2"
    # SMTP refused on the spot (reset), submission fine.
    assert got["tcp:192.0.2.1:25"] == "ERR ECONNREFUSED"
    # DNS to any address lands on the node's forwarder, over UDP and TCP.
    assert got["udp:192.0.2.1:53"] == "fwd 10.66.0.2 0"
    assert got["udp:203.0.113.10:53"] == "fwd 10.66.0.2 0"
    assert got["tcp:192.0.2.1:53"].startswith("fwd 10.66.0.2 ")
    # MSS clamped to the 1280-byte route: 1240 minus the timestamp option at most.
    assert int(got["tcp:192.0.2.2:80"].split()[2]) <= 1240
    # Refused, and at once (not a timeout): IPv6 in the tunnel (no NAT66 in this plan), and
    # everything the owner protects.
    for target in ["tcp:2001:db8:192::1:80", *protected]:
        assert got[target] in ("ERR EHOSTUNREACH", "ERR EACCES", "ERR ECONNREFUSED"), target

    status = backend.status()
    assert status.applied
    assert status.masquerades_on("u0")
    assert not status.masquerades_on("t0")
    assert status.mss_clamp
    assert status.dns_redirect
    assert any("on uplink u0" in line for line in backend.describe())

    backend.remove()
    assert not backend.is_applied()
    assert ruleset(kind, w.node) == before
    assert ok_from(cli.ask1("tcp", "192.168.77.50", 80)) == "10.66.0.2"


def test_uplink_switch_keeps_sessions(
    node_world: NodeWorld, kind: str, fw_names: FirewallNames, register: Register
) -> None:
    w = node_world
    backend = register(make_backend(kind, fw_names, w.node))
    backend.apply(plan_for(fw_names))
    # This session's host stays reachable through u0 after the default route moves.
    w.node.ip("route", "add", "192.0.2.1/32", "via", "203.0.113.10", "dev", "u0")
    session = w.world.session(w.client, "192.0.2.1", 80)
    try:
        assert session.greeting.startswith("inet 203.0.113.2")
        w.node.ip("route", "replace", "default", "via", "198.51.100.10", "dev", "u1")
        backend.update_uplink("u1")
        # New connections leave by the new uplink, with its address.
        assert ok_from(w.client.ask1("tcp", "192.0.2.3", 80)) == "198.51.100.2"
        status = backend.status()
        assert status.masquerades_on("u1")
        assert not status.masquerades_on("u0")
        # The NAT really moved: a new connection by the old uplink is no longer translated.
        assert w.client.ask1("tcp", "192.0.2.1", 587).startswith("ERR")
        # The connection opened before the switch still carries data.
        assert session.say("still there") == "still there"
        backend.apply(plan_for(fw_names, uplink_if="u1"))  # re-apply is idempotent
        assert session.say("again") == "again"
    finally:
        w.node.ip("route", "replace", "default", "via", "203.0.113.10", "dev", "u0")
        w.node.ip("route", "del", "192.0.2.1/32")
    backend.remove()


def test_a_new_block_cuts_connections_established_before_it(
    node_world: NodeWorld, kind: str, fw_names: FirewallNames, register: Register
) -> None:
    """Established flows may be accepted before owner protection (nft), so a destination
    the owner blocks (or an exception withdrawn) must stop connections already open to it
    at once; the others keep flowing."""
    w = node_world
    exception = (ia.ip_network("10.200.0.1/32"),)
    backend = register(make_backend(kind, fw_names, w.node))
    backend.apply(plan_for(fw_names, allow_list=exception))
    to_block = w.world.session(w.client, "192.0.2.1", 80)
    granted = w.world.session(w.client, "10.200.0.1", 80)
    kept = w.world.session(w.client, "192.0.2.3", 80)
    for session in (to_block, granted, kept):
        assert session.greeting.startswith("inet "), session.greeting
        assert session.say("before") == "before"  # the flows are established
    # The owner blocks 192.0.2.1 and withdraws the exception for 10.200.0.1.
    blocked = (*DEFAULT_BLOCK_RANGES, ia.ip_network("192.0.2.1/32"))
    backend.apply(plan_for(fw_names, block_ranges=blocked))
    assert to_block.say("after").startswith("ERR")
    assert granted.say("after").startswith("ERR")
    assert kept.say("after") == "after"
    # New connections meet the block too.
    assert w.client.ask1("tcp", "192.0.2.1", 80).startswith("ERR")
    assert ok_from(w.client.ask1("tcp", "192.0.2.3", 80)) == "203.0.113.2"
    backend.remove()


def test_nat66_and_connection_limit(
    node_world: NodeWorld, kind: str, fw_names: FirewallNames, register: Register
) -> None:
    w = node_world
    before = ruleset(kind, w.node)
    backend = register(make_backend(kind, fw_names, w.node))
    backend.apply(
        plan_for(
            fw_names,
            tunnel_v6=ia.IPv6Interface("fd66::1/64"),
            ipv6_mode="nat66",
            per_client_conn_limit=3,
            mss_clamp=False,
        )
    )
    # Without the clamp the far end keeps the MSS of its own 1500-byte link.
    assert int(w.client.ask1("tcp", "192.0.2.2", 80).split()[2]) > 1240
    assert ok_from(w.client.ask1("tcp", "2001:db8:192::1", 80)) == "2001:db8:203::2"
    answers = w.client.ask("tcp", "192.0.2.1", 80, count=5)
    assert [a.startswith("inet ") for a in answers] == [True, True, True, False, False]
    # Back to reject mode: the IPv6 chains/rules go, IPv6 is refused again.
    backend.apply(plan_for(fw_names))
    assert w.client.ask1("tcp", "2001:db8:192::1", 80).startswith("ERR")
    backend.remove()
    assert ruleset(kind, w.node) == before


def test_journal_undoes_after_a_crash(
    node_world: NodeWorld, kind: str, fw_names: FirewallNames, register: Register, tmp_path: Path
) -> None:
    w = node_world
    before = ruleset(kind, w.node)
    runner = SubprocessRunner(netns=w.node.name)
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        backend = register(make_backend(kind, fw_names, w.node, journal))
        backend.apply(plan_for(fw_names))
        assert len(journal) == 1
        backend.update_uplink("u0")
        assert len(journal) == 1  # re-apply does not journal twice
    # The process "died" here: the rules are still in place, the journal holds their undo.
    assert ruleset(kind, w.node) != before
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        assert journal.replay() == 1
        assert len(journal) == 0
    assert ruleset(kind, w.node) == before


def test_sweep_removes_ours_and_creates_nothing(
    node_world: NodeWorld, kind: str, fw_names: FirewallNames, register: Register
) -> None:
    w = node_world
    before = ruleset(kind, w.node)
    legacy_before = w.node.run("cat", "/proc/net/ip_tables_names").stdout
    backend = register(make_backend(kind, fw_names, w.node))
    backend.apply(plan_for(fw_names))
    # A new process, no state: only the names.
    assert sweep(fw_names, SubprocessRunner(netns=w.node.name)) == []
    assert not backend.is_applied()
    _forget_empty_tables(kind, w.node, backend)
    assert ruleset(kind, w.node) == before
    if kind != "iptables-legacy":
        # Looking for legacy rules must not have created legacy tables.
        assert w.node.run("cat", "/proc/net/ip_tables_names").stdout == legacy_before


def _forget_empty_tables(kind: str, ns: Netns, backend: FirewallBackend) -> None:
    """After a sweep: the tables iptables-nft created for our rules may stay — a sweep has no
    state telling which were there before — but only empty; the backend that created them
    knows they are its own and deletes them."""
    if kind != "iptables-nft":
        return
    items = json.loads(ns.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
    left = [
        i
        for i in items
        if ("rule" in i and i["rule"]["family"] in ("ip", "ip6"))
        or ("chain" in i and i["chain"]["family"] in ("ip", "ip6") and "hook" not in i["chain"])
    ]
    assert left == []
    backend.remove()


def test_auto_picks_iptables_where_forward_drops(
    node_world: NodeWorld, fw_names: FirewallNames, register: Register
) -> None:
    """Docker, ufw and firewalld leave FORWARD dropping: an accept in our own nft table would
    not override that, our accept inside that very chain does."""
    w = node_world
    if shutil.which("iptables") is None:
        pytest.skip("no iptables here")
    runner = SubprocessRunner(netns=w.node.name)
    w.node.run("iptables", "-P", "FORWARD", "DROP")
    try:
        backend = register(get_backend("auto", fw_names, runner))
        assert isinstance(backend, IptablesBackend)
        backend.apply(plan_for(fw_names))
        assert ok_from(w.client.ask1("tcp", "192.0.2.1", 80)) == "203.0.113.2"
        backend.remove()
        assert w.client.ask1("tcp", "192.0.2.1", 80).startswith("ERR")  # the host's DROP again
    finally:
        w.node.run("iptables", "-P", "FORWARD", "ACCEPT")
    assert isinstance(get_backend("auto", fw_names, runner), NftBackend)


_SWEEP = """
import json, sys
import higgs.osnet.firewall  # registers the firewall's sweep hook, as `cleanup` does
from higgs.osnet.names import OwnedNames
from higgs.osnet.runner import SubprocessRunner
from higgs.osnet.sweep import sweep
owned = OwnedNames.for_instance("node", sys.argv[1])
report = sweep(owned, runner=SubprocessRunner(netns=sys.argv[2]), netns=sys.argv[2])
print(json.dumps({"removed": report.removed, "failures": [w for w, _ in report.failures]}))
"""


def test_cleanup_sweep_hook_removes_node_rules_and_kill_switch(
    node_world: NodeWorld, kind: str, register: Register
) -> None:
    """`higgsnode cleanup` runs osnet's sweep, which must find our rules by name alone."""
    w = node_world
    instance = unique("s")
    owned = OwnedNames.for_instance("node", instance)
    before = ruleset(kind, w.node)
    fw, ks = FirewallNames.of(owned), FirewallNames.of(owned, KILL_SWITCH_PART)
    node_fw = register(make_backend(kind, fw, w.node))
    node_fw.apply(plan_for(fw))
    kill_fw = register(make_backend(kind, ks, w.node))
    kill_fw.apply(KillSwitchPolicy(names=ks, tunnel_if="t0"))
    # A process of its own, like `higgsnode cleanup` (pyroute2 forks to enter a namespace,
    # which is best kept out of the test runner's process).
    out = subprocess.run(
        [sys.executable, "-c", _SWEEP, instance, w.node.name],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    report = json.loads(out)
    assert report["failures"] == []
    if kind == "nft":
        assert f"nft table inet {fw.table}" in report["removed"]
        assert f"nft table inet {ks.table}" in report["removed"]
    else:
        assert any(r.endswith(f"chain {fw.chain('FWD')}") for r in report["removed"])
        assert any(r.endswith(f"chain {ks.chain('OUT')}") for r in report["removed"])
    _forget_empty_tables(kind, w.node, kill_fw)
    _forget_empty_tables(kind, w.node, node_fw)
    assert ruleset(kind, w.node) == before
