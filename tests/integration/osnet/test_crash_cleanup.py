"""SIGKILL in the middle of a life, then cleanup: the namespace is exactly as before (root).

The child runs inside the namespace (as higgsnode would under `ip netns exec`), makes real
changes — a sysctl, a wireguard-go interface with an address, a route, wg-quick's policy
rules — and is SIGKILLed. Cleanup (journal replay, then sweep) runs in a fresh process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from higgs.osnet import hoststate, procs, routes, wireguard
from higgs.osnet.journal import Journal
from higgs.osnet.names import OwnedNames
from higgs.osnet.routes import Route, Rule
from higgs.osnet.runner import SubprocessRunner
from higgs.osnet.sweep import sweep

from .conftest import Namespaces, sh

pytestmark = pytest.mark.root

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from higgs.common.keys import PrivateKey
    from higgs.osnet import routes, sysctl
    from higgs.osnet.journal import Journal
    from higgs.osnet.names import OwnedNames
    from higgs.osnet.routes import Route
    from higgs.osnet.wireguard import WireGuard

    state, instance, ifname = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    names = OwnedNames.for_instance("node", instance, interface=ifname)
    journal = Journal(state / "journal.json")
    with journal.transaction("setup"):
        sysctl.set(journal, "net.ipv4.ip_forward", "1")
        wg = WireGuard(names.interface, journal=journal)
        wg.create()
        wg.configure(PrivateKey.generate(), listen_port=51820, fwmark=names.fwmark)
        wg.set_addresses(["10.77.0.1/24"])
        wg.up(mtu=1420)
        routes.add_route(journal, Route("10.78.0.0/16", dev=names.interface))
        routes.full_tunnel(journal, names, families=(4, 6))
    print("ready", flush=True)
    time.sleep(120)
    """
)

CLEANUP = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from higgs.osnet.cleanup import cleanup
    from higgs.osnet.names import OwnedNames

    names = OwnedNames.for_instance("node", sys.argv[2], interface=sys.argv[3])
    report = cleanup(Path(sys.argv[1]) / "journal.json", names)
    report.raise_for_failures()
    print(report.undone, len(report.swept))
    """
)


def in_ns(ns: str, script: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args]


def test_sigkill_then_cleanup_restores_the_namespace_exactly(
    namespaces: Namespaces, tmp_path: Path
) -> None:
    ns = namespaces.new("n")
    ifname = namespaces.ifname("n")
    instance = f"t{namespaces.tag}"
    before = hoststate.snapshot(netns=ns)

    child = subprocess.Popen(
        in_ns(ns, CHILD, str(tmp_path), instance, ifname), stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

    during = hoststate.snapshot(netns=ns)
    changed = before.diff(during)
    assert ifname in changed
    assert "net.ipv4.ip_forward=1" in changed
    assert "10.78.0.0/16" in changed
    assert "suppress_prefixlength 0" in changed
    with Journal(tmp_path / "journal.json", runner=SubprocessRunner()) as peek:
        wg = next(e.undo for e in peek.entries if e.undo["op"] == "wireguard_go")
    assert procs.is_running(wg["pid"], wg["start_time"])  # wireguard-go outlived its parent

    out = subprocess.run(
        in_ns(ns, CLEANUP, str(tmp_path), instance, ifname),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    undone, swept = map(int, out.stdout.split())
    assert undone >= 9  # sysctls, interface, route, v4 + v6 rules and table routes
    assert swept == 0  # the journal had it all
    after = hoststate.snapshot(netns=ns)
    assert before == after, before.diff(after)
    assert not procs.is_running(wg["pid"], wg["start_time"])
    assert not (Path("/var/run/wireguard") / f"{ifname}.sock").exists()


def test_journal_replay_finds_wireguard_go_whose_pid_was_never_journaled(
    namespaces: Namespaces, tmp_path: Path
) -> None:
    """The crash window between journaling the intent and learning the PID."""
    ns = namespaces.new("n")
    names = OwnedNames.for_instance("node", f"t{namespaces.tag}", namespaces.ifname("w"))
    runner = SubprocessRunner()
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        journal.record(
            "wireguard-go", wireguard.wireguard_go_undo(names.interface, names.wg_socket, ns)
        )
        pid = runner.spawn(["ip", "netns", "exec", ns, "wireguard-go", "-f", names.interface])
        start = procs.process_start_time(pid)
        assert start is not None
        wait_for(names.wg_socket)
        journal.replay()
    assert not procs.is_running(pid, start)
    assert not names.wg_socket.exists()
    assert names.interface not in sh("ip", "-n", ns, "link", "show")


def wait_for(path: Path) -> None:
    import time

    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_sweep_removes_only_what_carries_our_names(namespaces: Namespaces, tmp_path: Path) -> None:
    ns = namespaces.new("n")
    ours = OwnedNames.for_instance("node", f"t{namespaces.tag}", namespaces.ifname("s"))
    other = OwnedNames.for_instance("node", f"u{namespaces.tag}", "other0")
    sh("ip", "-n", ns, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
    sh("ip", "-n", ns, "link", "set", "other0", "up")
    sh("ip", "-n", ns, "link", "set", "other1", "up")
    before = hoststate.snapshot(netns=ns)

    runner = SubprocessRunner()
    # Leftovers of a crash that never reached the journal (no journal is read below).
    pid = runner.spawn(["ip", "netns", "exec", ns, "wireguard-go", "-f", ours.interface])
    start = procs.process_start_time(pid)
    assert start is not None
    wait_for(ours.wg_socket)
    sh("ip", "-n", ns, "link", "set", ours.interface, "up")
    with Journal(tmp_path / "scratch.json", runner=runner) as scratch:
        routes.add_route(
            scratch, Route("0.0.0.0/0", dev=ours.interface, table=ours.table_id), netns=ns
        )
        routes.full_tunnel(scratch, ours, families=(4,), netns=ns)
        routes.add_rule(scratch, Rule(100, other.table_id, 4, fwmark=other.fwmark), netns=ns)
        routes.add_route(
            scratch, Route("10.5.0.0/16", dev="other0", table=other.table_id), netns=ns
        )
        for entry in scratch.entries:  # forget them all: the sweep must find ours by name
            scratch.forget(entry)

    report = sweep(ours, runner=runner, netns=ns)
    report.raise_for_failures()
    assert any("wireguard-go" in r for r in report.removed)
    assert not procs.is_running(pid, start)
    rules = sh("ip", "-n", ns, "rule", "show")
    assert f"lookup {ours.table_id}" not in rules
    assert "suppress_prefixlength" not in rules
    assert f"lookup {other.table_id}" in rules  # another instance's rule stays
    assert routes.routes_in_table(other.table_id, netns=ns) != []
    assert routes.routes_in_table(ours.table_id, netns=ns) == []
    # The sweep is stateless and idempotent: running it again finds nothing.
    assert sweep(ours, runner=runner, netns=ns).removed == []

    routes.delete_rule(Rule(100, other.table_id, 4, fwmark=other.fwmark), netns=ns)
    routes.delete_route(Route("10.5.0.0/16", dev="other0", table=other.table_id), netns=ns)
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.src_valid_mark=0")
    after = hoststate.snapshot(netns=ns)
    assert before == after, before.diff(after)


def test_a_half_done_setup_rolls_itself_back(namespaces: Namespaces, tmp_path: Path) -> None:
    from higgs.common.keys import PrivateKey
    from higgs.osnet import sysctl
    from higgs.osnet.routes import RouteError
    from higgs.osnet.wireguard import WireGuard

    ns = namespaces.new("r")
    names = OwnedNames.for_instance("node", f"t{namespaces.tag}", namespaces.ifname("r"))
    before = hoststate.snapshot(netns=ns)

    def setup(journal: Journal) -> None:
        with journal.transaction("start"):
            sysctl.set(journal, "net.ipv4.ip_forward", "1", netns=ns)
            wg = WireGuard(names.interface, journal=journal, netns=ns)
            wg.create()
            wg.configure(PrivateKey.generate(), listen_port=51820, fwmark=names.fwmark)
            wg.set_addresses(["10.77.0.1/24"])
            wg.up()
            routes.full_tunnel(journal, names, families=(4,), netns=ns)
            routes.add_route(journal, Route("10.79.0.0/16", dev="no-such-dev"), netns=ns)

    with Journal(tmp_path / "journal.json") as journal:
        with pytest.raises(RouteError, match="no interface no-such-dev"):
            setup(journal)
        assert len(journal) == 0
    after = hoststate.snapshot(netns=ns)
    assert before == after, before.diff(after)
    assert not names.wg_socket.exists()
