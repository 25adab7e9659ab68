"""The tables and built-in chains iptables-nft creates for our rules: noted before, journaled,
deleted when empty.

Command outputs are captured from nft 1.0.6 / iptables-nft 1.8.9 (captured/iptables-nft.*).
"""

from __future__ import annotations

import dataclasses
import ipaddress as ia
import json
import logging
from pathlib import Path

import pytest

from higgs.osnet.firewall import UNDO, DnsRedirect, FirewallError, IptablesBackend, NodePolicy
from higgs.osnet.firewall import iptables_tables as tables
from higgs.osnet.journal import Journal
from higgs.osnet.runner import RecordingRunner

from .test_backends import NODE, JournalWatchingRunner

CAPTURED = Path(__file__).parent / "captured"
# `nft list chains` on a host whose iptables-nft already had IPv4 rules (Docker-like: one in
# filter FORWARD, one in nat POSTROUTING), and two nft tables of others, one of them empty.
LIST_CHAINS = (CAPTURED / "iptables-nft.nft-list-chains.txt").read_text()
EMPTY_INPUT = (CAPTURED / "iptables-nft.chain-input-empty.json").read_text()
EMPTY = (CAPTURED / "iptables-nft.filter-empty.json").read_text()
EMPTY_NAT = (CAPTURED / "iptables-nft.ip6-nat-empty.json").read_text()
ABSENT = (CAPTURED / "iptables-nft.list-absent.stderr.txt").read_text()
assert isinstance(NODE, NodePolicy)
NO_NAT66 = dataclasses.replace(
    NODE,
    ipv6_mode="reject",
    tunnel_v6=None,
    dns=DnsRedirect(ia.IPv4Address("10.66.0.1"), 5353),
)


def _script_empty(runner: RecordingRunner) -> None:
    """Every table holds only its empty built-in chains (what our removal leaves)."""
    runner.script(["nft", "-j", "list", "table"], stdout=EMPTY)
    runner.script(["nft", "-j", "list", "table", "ip", "nat"], stdout=EMPTY_NAT)
    runner.script(["nft", "-j", "list", "table", "ip6", "nat"], stdout=EMPTY_NAT)
    runner.script(["nft", "-j", "list", "chain"], stdout=EMPTY_INPUT)


def _deletes(runner: RecordingRunner) -> list[tuple[str, ...]]:
    return [c[2:] for c in runner.calls if c[:2] == ("nft", "delete")]


def test_absent_tables_are_journaled_before_the_first_rule(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    runner = JournalWatchingRunner(path)
    runner.script(["nft", "list", "chains"], stdout=LIST_CHAINS)
    with Journal(path, runner=runner) as journal:
        IptablesBackend(NODE.names, runner, journal, flavour="nft").apply(NODE)
        undo = journal.entries[0].undo
    # ip filter and ip nat were there already: only the IPv6 ones are ours to delete, and
    # the built-in chains our jumps go to that those two tables lacked.
    assert undo["created_tables"] == [["ip6", "filter"], ["ip6", "nat"]]
    assert undo["created_chains"] == [["ip", "filter", "INPUT"], ["ip", "nat", "PREROUTING"]]
    probe = runner.calls.index(("nft", "list", "chains"))
    first_restore = next(i for i, c in enumerate(runner.calls) if "restore" in c[0])
    assert probe < first_restore
    assert runner.entries_seen[probe] == 0  # looked before the journal entry was written
    assert runner.entries_seen[first_restore] == 1  # and the entry came before the rules


def test_remove_deletes_the_created_tables_once_empty(tmp_path: Path) -> None:
    runner = RecordingRunner()
    runner.script(["nft", "list", "chains"], stdout=LIST_CHAINS)
    _script_empty(runner)
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        backend = IptablesBackend(NODE.names, runner, journal, flavour="nft")
        backend.apply(NODE)
        backend.remove()
        assert len(journal) == 0
    assert _deletes(runner) == [
        ("chain", "ip", "filter", "INPUT"),
        ("chain", "ip", "nat", "PREROUTING"),
        ("table", "ip6", "filter"),
        ("table", "ip6", "nat"),
    ]
    # Our chains went first: a table can only be empty once they are gone.
    first_delete = runner.calls.index(("nft", "delete", "chain", "ip", "filter", "INPUT"))
    assert all(c[0] != "ip6tables-nft" for c in runner.calls[first_delete:])


def test_replay_after_a_crash_deletes_them_and_a_second_replay_finds_nothing(
    tmp_path: Path,
) -> None:
    runner = RecordingRunner()  # `nft list tables` says nothing exists: all four are ours
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        IptablesBackend(NODE.names, runner, journal, flavour="nft").apply(NODE)
    # The process died; a new one (`cleanup`, or the next start) replays the journal.
    runner.calls.clear()
    _script_empty(runner)
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        assert journal.replay() == 1
    assert _deletes(runner) == [
        ("table", "ip", "filter"),
        ("table", "ip", "nat"),
        ("table", "ip6", "filter"),
        ("table", "ip6", "nat"),
    ]
    # Undone again (killed before the journal was saved): every table is gone already.
    runner.calls.clear()
    runner.script(["nft", "-j", "list"], returncode=1, stderr=ABSENT)
    spec = IptablesBackend(NODE.names, runner, flavour="nft")
    spec._created_tables = {("ip", "filter"), ("ip6", "nat")}
    spec._created_chains = {("ip", "nat", "PREROUTING")}
    replayed = IptablesBackend.from_undo(UNDO.parse(spec.undo_spec()), runner)
    assert replayed._remove() == []  # no error either
    assert _deletes(runner) == []


@pytest.mark.parametrize(
    ("capture", "why"),
    [
        ("filter-other-chain", "it holds the chain OTHER"),
        ("filter-policy-drop", "the policy of FORWARD is now drop"),
        ("filter-rule", "it holds a rule"),
    ],
)
def test_a_table_someone_else_uses_now_is_kept_and_the_log_says_why(
    capture: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    runner = RecordingRunner()
    text = (CAPTURED / f"iptables-nft.{capture}.json").read_text()
    runner.script(["nft", "-j", "list", "table", "ip", "filter"], stdout=text)
    with caplog.at_level(logging.INFO, logger=tables.__name__):
        assert tables.delete_table_if_empty(runner, ("ip", "filter")) is None
    assert _deletes(runner) == []
    assert why in caplog.text


def test_a_chain_someone_else_put_a_rule_in_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    runner = RecordingRunner()
    text = (CAPTURED / "iptables-nft.chain-forward-rule.json").read_text()
    runner.script(["nft", "-j", "list", "chain"], stdout=text)
    with caplog.at_level(logging.INFO, logger=tables.__name__):
        assert tables.delete_chain_if_empty(runner, ("ip", "filter", "FORWARD")) is None
    assert _deletes(runner) == []
    assert "keeping nftables chain ip filter FORWARD" in caplog.text
    assert "it holds a rule" in caplog.text


def test_an_empty_table_or_chain_is_deleted() -> None:
    runner = RecordingRunner()
    runner.script(["nft", "-j", "list", "table", "ip", "filter"], stdout=EMPTY)
    runner.script(["nft", "-j", "list", "chain"], stdout=EMPTY_INPUT)
    assert tables.delete_table_if_empty(runner, ("ip", "filter"))
    assert tables.delete_chain_if_empty(runner, ("ip", "filter", "INPUT"))
    assert _deletes(runner) == [("table", "ip", "filter"), ("chain", "ip", "filter", "INPUT")]


def test_a_failing_delete_is_reported_and_the_entry_stays(tmp_path: Path) -> None:
    runner = RecordingRunner()
    _script_empty(runner)
    runner.script(["nft", "delete"], returncode=1, stderr="Error: Operation not permitted")
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        backend = IptablesBackend(NODE.names, runner, journal, flavour="nft")
        backend.apply(NODE)
        with pytest.raises(Exception, match="Operation not permitted"):
            backend.remove()
        assert len(journal) == 1  # `cleanup` retries it


def test_a_plan_needing_another_table_amends_the_journal_first(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    runner = RecordingRunner()
    runner.script(["nft", "list", "chains"], stdout=LIST_CHAINS)
    with Journal(path, runner=runner) as journal:
        backend = IptablesBackend(NODE.names, runner, journal, flavour="nft")
        backend.apply(NO_NAT66)
        assert journal.entries[0].undo["created_tables"] == [["ip6", "filter"]]
        probes = sum(1 for c in runner.calls if c[:3] == ("nft", "list", "chains"))
        backend.apply(NODE)  # NAT66 switched on: ip6tables-nft will create `table ip6 nat`
        assert len(journal) == 1
        on_disk = json.loads(path.read_text())["entries"][0]["undo"]
        assert on_disk["created_tables"] == [["ip6", "filter"], ["ip6", "nat"]]
        # Once all a plan's tables and chains are known, a re-apply looks only at the others
        # (ip filter FORWARD and ip nat POSTROUTING were there before us: looked at again).
        backend.apply(NODE)
        assert len(journal) == 1
        assert sum(1 for c in runner.calls if c[:3] == ("nft", "list", "chains")) == probes + 2


def test_legacy_and_unreadable_hosts_note_nothing() -> None:
    runner = RecordingRunner()
    IptablesBackend(NODE.names, runner, flavour="legacy").apply(NODE)
    assert not any(c[0] == "nft" for c in runner.calls)
    runner = RecordingRunner()
    runner.script(["nft"], returncode=1, stderr="Error: Operation not permitted")
    backend = IptablesBackend(NODE.names, runner, flavour="nft")
    backend.apply(NODE)
    assert backend.undo_spec()["created_tables"] == []
    assert backend.undo_spec()["created_chains"] == []
    # `plain`: the flavour comes from `iptables --version`.
    runner = RecordingRunner()
    runner.script(["iptables", "--version"], stdout="iptables v1.8.9 (nf_tables)\n")
    backend = IptablesBackend(NODE.names, runner, flavour="plain")
    backend.apply(NODE)
    assert len(backend.undo_spec()["created_tables"]) == 4


def test_a_journal_naming_other_tables_deletes_none_of_them() -> None:
    runner = RecordingRunner()
    spec = IptablesBackend(NODE.names, runner, flavour="nft").undo_spec()
    spec["created_tables"] = [["inet", "higgsnode_x"], ["ip", "docker"], "ip filter", ["ip"]]
    spec["created_chains"] = [["ip", "filter", "DOCKER"], ["inet", "filter", "INPUT"], None]
    backend = IptablesBackend.from_undo(UNDO.parse(spec), runner)
    assert backend._created_tables == set()
    assert backend._created_chains == set()


def test_remove_with_rules_left_does_not_touch_the_tables() -> None:
    runner = RecordingRunner()
    runner.script(
        ["iptables-nft", "-w", "10", "-t", "filter", "-S"], stdout="-N HIGGSNODE_NODE1-FWD\n"
    )
    runner.script(["iptables-nft", "-w", "10", "-t", "filter", "-X"], returncode=1, stderr="busy")
    backend = IptablesBackend(NODE.names, runner, flavour="nft")
    backend._created_tables = {("ip", "filter")}
    with pytest.raises(FirewallError, match="busy"):
        backend._remove()
    assert not any(c[0] == "nft" for c in runner.calls)
