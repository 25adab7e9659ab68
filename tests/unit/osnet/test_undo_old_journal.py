"""A journal written before the undo parameters were typed (the records below are what that
code wrote, key for key) is still parsed and carried out by the typed operations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from higgs.osnet import undo, undo_registry
from higgs.osnet.firewall import FirewallUndo
from higgs.osnet.journal import Journal
from higgs.osnet.portmap.types import Method
from higgs.osnet.portmap.undo import PortmapUndo
from higgs.osnet.relaynat import RelayFlushUndo, RelayNatUndo
from higgs.osnet.resolver import ResolvUndo
from higgs.osnet.routes import RouteUndo, RuleUndo
from higgs.osnet.runner import RecordingRunner
from higgs.osnet.sysctl import SysctlUndo
from higgs.osnet.wireguard import WireguardGoUndo

OLD_RECORDS: list[tuple[dict[str, Any], object]] = [
    (
        {"op": "argv", "argv": ["nft", "delete", "table", "inet", "x"]},
        undo.Argv(["nft", "delete", "table", "inet", "x"]),
    ),
    ({"op": "link_delete", "name": "ifb-hg", "netns": None}, undo.InterfaceDelete("ifb-hg")),
    (
        {"op": "file_restore", "path": "/tmp/x", "content": None, "mode": None},
        undo.FileRestore("/tmp/x", None),
    ),
    ({"op": "kill_pid", "pid": 42, "start_time": 7, "socket": None}, undo.KillPid(42, 7)),
    (
        {"op": "sysctl", "key": "net.ipv4.ip_forward", "value": "0", "netns": "hgA"},
        SysctlUndo("net.ipv4.ip_forward", "0", "hgA"),
    ),
    (
        {
            "op": "route_delete",
            "netns": None,
            "dst": "0.0.0.0/0",
            "dev": "hg0",
            "gateway": None,
            "table": 51820,
            "metric": None,
        },
        RouteUndo("0.0.0.0/0", "hg0", table=51820),
    ),
    (
        {
            "op": "rule_delete",
            "netns": None,
            "priority": 100,
            "table": 51820,
            "family": 6,
            "fwmark": 51820,
            "invert": True,
            "suppress_prefixlength": None,
        },
        RuleUndo(100, 51820, 6, 51820, True),
    ),
    (
        {
            "op": "wireguard_go",
            "name": "hg0",
            "socket": "/var/run/wireguard/hg0.sock",
            "netns": None,
            "pid": None,
            "start_time": None,
        },
        WireguardGoUndo("hg0", "/var/run/wireguard/hg0.sock"),
    ),
    (
        {
            "op": "resolv_restore",
            "path": "/etc/resolv.conf",
            "kind": "symlink",
            "target": "../run/systemd/resolve/stub-resolv.conf",
        },
        ResolvUndo("/etc/resolv.conf", "symlink", target="../run/systemd/resolve/stub-resolv.conf"),
    ),
    (
        {
            "op": "resolv_restore",
            "path": "/etc/resolv.conf",
            "kind": "file",
            "content": "nameserver 192.0.2.53\n",
            "mode": 0o644,
        },
        ResolvUndo("/etc/resolv.conf", "file", content="nameserver 192.0.2.53\n", mode=0o644),
    ),
    (
        {
            "op": "firewall_remove",
            "backend": "nft",
            "table": "higgsnode",
            "chain_prefix": "HIGGSNODE",
            "comment": "higgs:node",
        },
        FirewallUndo("nft", "higgsnode", "HIGGSNODE", "higgs:node"),
    ),
    (
        {
            "op": "firewall_remove",
            "backend": "iptables",
            "flavour": "legacy",
            "table": "higgsnode",
            "chain_prefix": "HIGGSNODE",
            "comment": "higgs:node",
            "created_tables": [["ip", "nat"]],
            "created_chains": [],
        },
        FirewallUndo(
            "iptables", "higgsnode", "HIGGSNODE", "higgs:node", "legacy", [["ip", "nat"]], []
        ),
    ),
    (
        {
            "op": "portmap_delete",
            "method": "pcp",
            "gateway": "192.0.2.1",
            "internal_ip": "192.0.2.10",
            "internal_port": 51820,
            "external_port": 0,
            "nonce": "00ff",
            "location": "",
        },
        PortmapUndo(Method.PCP, "192.0.2.1", "192.0.2.10", 51820, 0, "00ff", ""),
    ),
    (
        {
            "op": "relay_nat_remove",
            "table": "higgs_relay",
            "mark": 4660,
            "relay_ip": "192.0.2.5",
            "first": 40000,
            "last": 40099,
        },
        RelayNatUndo("higgs_relay", 4660, "192.0.2.5", 40000, 40099),
    ),
    (
        {"op": "relay_conntrack_flush", "relay_ip": "192.0.2.5", "first": 40000, "last": 40099},
        RelayFlushUndo("192.0.2.5", 40000, 40099),
    ),
]


def test_every_operation_is_covered() -> None:
    assert {r["op"] for r, _ in OLD_RECORDS} == set(undo_registry.OPS)


@pytest.mark.parametrize(("record", "params"), OLD_RECORDS, ids=lambda v: str(v)[:40])
def test_an_old_record_parses_into_its_parameters_and_back(
    record: dict[str, Any], params: object
) -> None:
    op = undo_registry.OPS[record["op"]]
    assert op.parse(record) == params
    rebuilt = op.record(params)
    assert {k: v for k, v in rebuilt.items() if k in record} == record  # same keys, same values


def test_a_damaged_record_names_the_field() -> None:
    with pytest.raises(undo.BadUndoRecord, match="field 'start_time'"):
        undo.KILL_PID.parse({"op": "kill_pid", "pid": 42, "start_time": "soon"})


def test_an_old_journal_is_undone_newest_first(tmp_path: Path) -> None:
    old_file = tmp_path / "resolv.conf"
    old_file.write_text("nameserver 203.0.113.9\n")
    path = tmp_path / "journal.json"
    entries = [
        {"op": "link_delete", "name": "higgsnode", "netns": None},
        {"op": "sysctl", "key": "net.ipv4.ip_forward", "value": "0", "netns": "hgA"},
        {
            "op": "firewall_remove",
            "backend": "nft",
            "table": "higgsnode",
            "chain_prefix": "HIGGSNODE",
            "comment": "higgs:node",
        },
        {
            "op": "file_restore",
            "path": str(old_file),
            "content": "nameserver 192.0.2.53\n",
            "mode": 420,
        },
        {"op": "argv", "argv": ["true", "last"]},
    ]
    path.write_text(
        json.dumps(
            {
                "format": 1,
                "next_id": len(entries) + 1,
                "entries": [
                    {"id": i + 1, "what": f"change {i + 1}", "time": 1764081000.0 + i, "undo": u}
                    for i, u in enumerate(entries)
                ],
            }
        )
    )
    runner = RecordingRunner()
    with Journal(path, runner=runner) as journal:
        assert journal.replay() == len(entries)
        assert len(journal) == 0
    assert runner.commands[0] == ["true", "last"]
    assert old_file.read_text() == "nameserver 192.0.2.53\n"
    assert ["ip", "netns", "exec", "hgA", "sysctl", "-q", "-w", "net.ipv4.ip_forward=0"] in (
        runner.commands
    )
    nft = [c for c in runner.commands if c[:1] == ["nft"]]
    assert nft, runner.commands
    assert runner.commands[-1] == ["ip", "link", "delete", "dev", "higgsnode"]
    assert json.loads(path.read_text())["entries"] == []
