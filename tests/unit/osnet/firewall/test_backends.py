"""Backends through a recording funnel: the exact commands, journaled before, rolled back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from higgs.osnet.errors import CommandError
from higgs.osnet.firewall import (
    FirewallError,
    IptablesBackend,
    KillSwitchPolicy,
    NftBackend,
    NodePolicy,
    get_backend,
    nft_render,
    sweep,
)
from higgs.osnet.firewall import iptables as ipt
from higgs.osnet.firewall.nft import parse_status as nft_status
from higgs.osnet.journal import Journal
from higgs.osnet.runner import DEFAULT_TIMEOUT, CommandResult, RecordingRunner

from .variants import VARIANTS

CAPTURED = Path(__file__).parent / "captured"
NODE = VARIANTS["node_full"]
KS = VARIANTS["ks_strict"]
assert isinstance(NODE, NodePolicy)
assert isinstance(KS, KillSwitchPolicy)


class JournalWatchingRunner(RecordingRunner):
    """Notes how many journal entries were on disk when each command ran."""

    def __init__(self, journal_path: Path) -> None:
        super().__init__()
        self.journal_path = journal_path
        self.entries_seen: list[int] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult:
        on_disk = 0
        if self.journal_path.exists():
            on_disk = len(json.loads(self.journal_path.read_text())["entries"])
        self.entries_seen.append(on_disk)
        return super().run(argv, input=input, check=check, timeout=timeout)


def test_nft_apply_is_journaled_before_it_is_made(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    runner = JournalWatchingRunner(path)
    with Journal(path, runner=runner) as journal:
        backend = NftBackend(NODE.names, runner, journal)
        backend.apply(NODE)
        # The conntrack tool probed; applied; the flows to blocked destinations looked for
        # (none here); then read back: the fingerprint the rule watch compares with.
        listing = ["nft", "list", "table", "inet", NODE.names.table]
        assert runner.commands == [
            ["conntrack", "--version"],
            ["nft", "-f", "-"],
            ["conntrack", "-L", "-f", "ipv4", "-s", "10.66.0.0/24"],
            ["conntrack", "-L", "-f", "ipv6", "-s", "fd66::/64"],
            listing,
        ]
        assert runner.inputs[1] == nft_render.render(NODE)
        assert runner.entries_seen[1] == 1  # the entry was on disk before nft ran
        assert journal.entries[0].undo == {
            "op": "firewall_remove",
            "backend": "nft",
            "table": NODE.names.table,
            "chain_prefix": NODE.names.chain_prefix,
            "comment": NODE.names.comment,
            # FirewallUndo's iptables-only fields (a journal without them still parses).
            "flavour": None,
            "created_tables": [],
            "created_chains": [],
        }
        backend.update_uplink("wlan0")
        assert len(journal) == 1
        assert 'oifname "wlan0" ip saddr 10.66.0.0/24 masquerade' in (runner.inputs[-4] or "")
        backend.remove()
        assert len(journal) == 0
        assert runner.inputs[-1] == nft_render.render_delete(NODE.names.table)


_LISTING = (
    "tcp      6 431999 ESTABLISHED src=10.66.0.2 dst=192.168.1.20 sport=40000 dport=80 "
    "src=192.168.1.20 dst=192.168.1.10 sport=80 dport=40000 [ASSURED] mark=0 use=1\n"
    "tcp      6 431999 ESTABLISHED src=10.66.0.3 dst=192.0.2.1 sport=40001 dport=443 "
    "src=192.0.2.1 dst=192.168.1.10 sport=443 dport=40001 [ASSURED] mark=0 use=1\n"
    "udp      17 20 src=10.66.0.2 dst=10.66.0.1 sport=40002 dport=53 "
    "src=10.66.0.1 dst=10.66.0.2 sport=5353 dport=40002 mark=0 use=1\n"
)


def test_nft_apply_cuts_established_flows_to_blocked_destinations() -> None:
    """Established flows are accepted first, so the flows a new block list forbids lose
    their conntrack entries: here the one to the owner's LAN, not the one to the internet
    nor the DNS query to the node's own forwarder."""
    runner = RecordingRunner()
    runner.script(["conntrack", "-L", "-f", "ipv4"], stdout=_LISTING)
    runner.script(["conntrack", "-D"], stderr="1 flow entries have been deleted.")
    NftBackend(NODE.names, runner).apply(NODE)
    deletes = [c for c in runner.commands if c[:2] == ["conntrack", "-D"]]
    assert deletes == [["conntrack", "-D", "-f", "ipv4", "-s", "10.66.0.2", "-d", "192.168.1.20"]]
    assert "ct state established,related accept" in (runner.inputs[1] or "")


@pytest.mark.parametrize("failing", [["conntrack", "--version"], ["conntrack", "-L"]])
def test_nft_without_a_working_conntrack_keeps_protection_ahead(failing: list[str]) -> None:
    """No conntrack tool (or it fails): the flows cannot be cut, so the rules put owner
    protection ahead of the established shortcut, as before."""
    runner = RecordingRunner()
    runner.script(failing, returncode=1, stderr="conntrack: not here")
    NftBackend(NODE.names, runner).apply(NODE)
    applied = [i for c, i in zip(runner.commands, runner.inputs, strict=True) if c[0] == "nft"]
    last = next(i for i in reversed(applied) if i)
    assert last == nft_render.render(NODE, established_first=False)


def test_nft_failed_first_apply_rolls_back(tmp_path: Path) -> None:
    runner = RecordingRunner()
    runner.script(["nft", "-f", "-"], returncode=1, stderr="Error: syntax error", times=1)
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        backend = NftBackend(NODE.names, runner, journal)
        with pytest.raises(FirewallError, match="nftables refused"):
            backend.apply(NODE)
        assert len(journal) == 0
    # The table is deleted even though the script failed: nothing half-made stays.
    assert runner.inputs[-1] == nft_render.render_delete(NODE.names.table)


def test_plan_for_another_owner_is_refused() -> None:
    backend = NftBackend(KS.names, RecordingRunner())
    with pytest.raises(FirewallError, match="given to the backend"):
        backend.apply(NODE)


def test_update_uplink_needs_a_node_policy() -> None:
    backend = NftBackend(KS.names, RecordingRunner())
    backend.apply(KS)
    with pytest.raises(FirewallError, match="node policy"):
        backend.update_uplink("eth1")


def _ipt(runner: RecordingRunner) -> IptablesBackend:
    return IptablesBackend(NODE.names, runner, flavour="nft")


def test_iptables_inserts_missing_jumps_once() -> None:
    runner = RecordingRunner()
    runner.script(["iptables-nft", "-w", "10", "-t", "filter", "-C"], returncode=1, times=2)
    runner.script(["iptables-nft", "-w", "10", "-t", "nat", "-C"], returncode=1, times=2)
    runner.script(["ip6tables-nft", "-w", "10", "-t"], returncode=1, times=4)
    backend = _ipt(runner)
    backend.apply(NODE)
    restores = [i for c, i in zip(runner.calls, runner.inputs, strict=True) if "restore" in c[0]]
    assert [c[0] for c in runner.calls if "restore" in c[0]] == [
        "iptables-nft-restore",
        "ip6tables-nft-restore",
    ]
    assert restores[0] is not None
    assert restores[0].count("\n-I ") == 4
    # Second apply: every -C finds its jump; nothing is inserted again.
    runner.calls.clear()
    runner.inputs.clear()
    backend.apply(NODE)
    restores = [i for c, i in zip(runner.calls, runner.inputs, strict=True) if "restore" in c[0]]
    assert all("\n-I " not in (r or "") for r in restores)
    checks = [c for c in runner.calls if "-C" in c]
    assert checks[0] == (
        "iptables-nft", "-w", "10", "-t", "filter", "-C", "FORWARD",
        "-m", "comment", "--comment", "higgs:node:node1", "-j", "HIGGSNODE_NODE1-FWD",
    )  # fmt: skip


def _script_listing(runner: RecordingRunner, variant: str) -> None:
    for fam, tool in ((4, "iptables"), (6, "ip6tables")):
        for table in ("filter", "nat"):
            text = (CAPTURED / f"{variant}.{tool}-{table}-S.txt").read_text()
            runner.script([f"{tool}-nft", "-w", "10", "-t", table, "-S"], stdout=text)
        del fam


def test_iptables_remove_deletes_jumps_then_chains() -> None:
    runner = RecordingRunner()
    _script_listing(runner, "node_full")
    _ipt(runner).remove()
    changes = [c[3:] for c in runner.calls if c[0] == "iptables-nft" and "-S" not in c]
    assert changes == [
        ("-t", "filter", "-D", "INPUT", "-m", "comment", "--comment", "higgs:node:node1",
         "-j", "HIGGSNODE_NODE1-IN"),
        ("-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "higgs:node:node1",
         "-j", "HIGGSNODE_NODE1-FWD"),
        ("-t", "filter", "-F", "HIGGSNODE_NODE1-BLK"),
        ("-t", "filter", "-F", "HIGGSNODE_NODE1-FWD"),
        ("-t", "filter", "-F", "HIGGSNODE_NODE1-IN"),
        ("-t", "filter", "-X", "HIGGSNODE_NODE1-BLK"),
        ("-t", "filter", "-X", "HIGGSNODE_NODE1-FWD"),
        ("-t", "filter", "-X", "HIGGSNODE_NODE1-IN"),
        ("-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "higgs:node:node1",
         "-j", "HIGGSNODE_NODE1-PRE"),
        ("-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "higgs:node:node1",
         "-j", "HIGGSNODE_NODE1-NAT"),
        ("-t", "nat", "-F", "HIGGSNODE_NODE1-NAT"),
        ("-t", "nat", "-F", "HIGGSNODE_NODE1-PRE"),
        ("-t", "nat", "-X", "HIGGSNODE_NODE1-NAT"),
        ("-t", "nat", "-X", "HIGGSNODE_NODE1-PRE"),
    ]  # fmt: skip


def test_iptables_remove_tolerates_absent_and_reports_every_failure() -> None:
    runner = RecordingRunner()
    _script_listing(runner, "node_full")
    gone = "iptables: Bad rule (does a matching rule exist in that chain?)."
    runner.script(["iptables-nft", "-w", "10", "-t", "filter", "-D"], returncode=1, stderr=gone)
    busy = "iptables: Resource busy."
    runner.script(["iptables-nft", "-w", "10", "-t", "nat", "-X"], returncode=4, stderr=busy)
    with pytest.raises(FirewallError) as info:
        _ipt(runner).remove()
    assert str(info.value).count("Resource busy") == 2
    # every step was attempted despite the failures
    assert sum(1 for c in runner.calls if "-X" in c) == 10  # 5 chains per family


def test_iptables_failed_first_apply_rolls_back(tmp_path: Path) -> None:
    runner = RecordingRunner()
    runner.script(
        ["ip6tables-nft-restore"], returncode=2, stderr="ip6tables-restore: line 3 failed"
    )
    # The tables iptables-nft created for IPv4 are empty again after the rollback.
    empty = (CAPTURED / "iptables-nft.filter-empty.json").read_text()
    runner.script(["nft", "-j", "list", "table"], stdout=empty)
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        backend = IptablesBackend(NODE.names, runner, journal, flavour="nft")
        with pytest.raises(FirewallError, match="ip6tables-nft-restore refused"):
            backend.apply(NODE)
        assert len(journal) == 0
    # the rollback listed both families' tables to remove what IPv4 had already added
    assert ("iptables-nft", "-w", "10", "-t", "filter", "-S") in runner.calls[-16:]
    assert ("nft", "delete", "table", "ip", "filter") in runner.calls


@pytest.mark.parametrize("variant", ["node_full", "ks_strict"])
def test_status_from_captured_listings(variant: str) -> None:
    from_nft = nft_status((CAPTURED / f"{variant}.nft-list.txt").read_text())
    saves = {
        (fam, table): (CAPTURED / f"{variant}.{tool}-{table}-S.txt").read_text()
        for fam, tool in ((4, "iptables"), (6, "ip6tables"))
        for table in ("filter", "nat")
    }
    from_ipt = ipt.parse_status(VARIANTS[variant].names, saves)
    for status in (from_nft, from_ipt):
        assert status.applied
        if variant == "node_full":
            assert status.masquerade == (
                ("10.66.0.0/24", "enp3s0.100"),
                ("fd66::/64", "enp3s0.100"),
            )
            assert status.dns_redirect == ("10.66.0.1:5353", "[fd66::1]:5353")
            assert status.mss_clamp
            assert not status.kill_switch
            assert "masquerade of 10.66.0.0/24 on uplink enp3s0.100 present" in status.lines()
        else:
            assert status.kill_switch
            assert not status.masquerade


def test_status_when_absent() -> None:
    assert not nft_status("").applied
    assert nft_status("").lines() == ["nft: no firewall rules of ours present"]
    listing = (CAPTURED / "node_full.iptables-filter-S.txt").read_text()
    other = VARIANTS["node_minimal"].names  # another owner's rules are not ours
    assert not ipt.parse_status(other, {(4, "filter"): listing}).applied


def test_get_backend_auto_prefers_nft_unless_forward_drops() -> None:
    runner = RecordingRunner()
    runner.script(["iptables", "--version"], stdout="iptables v1.8.9 (nf_tables)\n")
    assert isinstance(get_backend("auto", NODE.names, runner), NftBackend)
    runner.script(["iptables", "-w", "10", "-S", "FORWARD"], stdout="-P FORWARD DROP\n")
    chosen = get_backend("auto", NODE.names, runner)
    assert isinstance(chosen, IptablesBackend)
    assert chosen.tools.flavour == "nft"
    runner.script(["nft", "-c"], returncode=1, stderr="Error: Could not process rule")
    runner.script(["iptables", "-w", "10", "-S", "FORWARD"], stdout="-P FORWARD ACCEPT\n")
    assert isinstance(get_backend("auto", NODE.names, runner), IptablesBackend)


def test_get_backend_by_name_and_errors() -> None:
    runner = RecordingRunner()
    assert isinstance(get_backend("nft", NODE.names, runner), NftBackend)
    with pytest.raises(FirewallError, match="unknown firewall backend"):
        get_backend("pf", NODE.names, runner)
    runner.script(["nft", "-c"], returncode=1, stderr="Error: Could not process rule")
    with pytest.raises(FirewallError, match="does not work"):
        get_backend("nft", NODE.names, runner)
    runner.script(["iptables"], returncode=1, stderr="iptables: not found")
    runner.script(["ip6tables"], returncode=1, stderr="ip6tables: not found")
    runner.script(["iptables-nft"], returncode=1, stderr="nope")
    runner.script(["iptables-legacy"], returncode=1, stderr="nope")
    with pytest.raises(FirewallError, match="neither nftables nor iptables"):
        get_backend("auto", NODE.names, runner)


def test_journal_replay_removes_with_the_recorded_backend(tmp_path: Path) -> None:
    runner = RecordingRunner()
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        IptablesBackend(NODE.names, runner, journal, flavour="legacy").apply(NODE)
    runner.calls.clear()
    runner.script(["cat", "/proc/net/ip_tables_names"], stdout="nat\nfilter\n")
    runner.script(["cat", "/proc/net/ip6_tables_names"], stdout="filter\n")
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        assert journal.replay() == 1
    listed = [(c[0], c[4]) for c in runner.calls if "-S" in c]
    # legacy: only tables that exist are listed (listing one would create it)
    assert listed == [
        ("iptables-legacy", "filter"),
        ("iptables-legacy", "nat"),
        ("ip6tables-legacy", "filter"),
    ]


def test_sweep_tries_every_backend_and_reports_failures() -> None:
    runner = RecordingRunner()
    runner.script(["nft", "-f", "-"], returncode=1, stderr="Error: Operation not permitted")
    failures = sweep(NODE.names, runner)
    assert len(failures) == 1
    assert "Operation not permitted" in failures[0]
    assert any(c[0] == "iptables-nft" and "-S" in c for c in runner.calls)


def test_command_error_not_found_is_success_for_removal() -> None:
    exc = CommandError(["iptables", "-X", "X"], 1, "iptables: No chain/target/match by that name.")
    assert exc.not_found
