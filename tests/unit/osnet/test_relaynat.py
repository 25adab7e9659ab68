"""The UDP relay's nft table and its conntrack handling, as text and commands (no root)."""

from __future__ import annotations

from higgs.osnet import undo, undo_registry
from higgs.osnet.relaynat import (
    UNDO_OP,
    Flow,
    RelayNatNames,
    flush_port,
    render_flow,
    render_table,
)
from higgs.osnet.runner import RecordingRunner

NAMES = RelayNatNames.for_instance("t1")
FLOW = Flow(40003, ("198.51.100.10", 50001), ("203.0.113.5", 51820))


def test_names_are_ours_and_stable() -> None:
    assert NAMES.table == "higgsrelay_t1"
    assert RelayNatNames.for_instance("t1").mark == NAMES.mark
    assert NAMES.mark >> 16 == 0x6867
    assert RelayNatNames.for_instance().table == "higgsrelay"


def test_the_table_dnats_only_the_relay_address_and_range() -> None:
    text = render_table(NAMES, "192.0.2.1", 40000, 49999)
    assert text.startswith("table ip higgsrelay_t1\ndelete table ip higgsrelay_t1\n")
    assert (
        "ip daddr 192.0.2.1 udp dport 40000-49999"
        " dnat ip to ip saddr . udp sport . udp dport map @to_peer" in text
    )
    assert "ct status dnat ct original ip daddr 192.0.2.1 snat ip to" in text
    assert f"ct mark set 0x{NAMES.mark:08x} counter name forwarded" in text


def test_a_flow_maps_both_directions_and_both_snat_back_to_the_relay_port() -> None:
    assert render_flow(NAMES, "192.0.2.1", FLOW, add=True) == (
        "add element ip higgsrelay_t1 to_peer { 198.51.100.10 . 50001 . 40003 : "
        "203.0.113.5 . 51820, 203.0.113.5 . 51820 . 40003 : 198.51.100.10 . 50001 }\n"
        "add element ip higgsrelay_t1 to_relay { 198.51.100.10 . 50001 . 203.0.113.5 . 51820"
        " : 192.0.2.1 . 40003, 203.0.113.5 . 51820 . 198.51.100.10 . 50001"
        " : 192.0.2.1 . 40003 }\n"
    )
    assert render_flow(NAMES, "192.0.2.1", FLOW, add=False).startswith("delete element")


def test_flushing_a_port_deletes_both_directions_and_zero_deleted_is_fine() -> None:
    runner = RecordingRunner()
    runner.script(["conntrack", "-D"], returncode=1, stderr="0 flow entries have been deleted.\n")
    assert flush_port(runner, "192.0.2.1", 40003) == 0
    assert runner.commands == [
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "192.0.2.1", "--orig-port-dst", "40003"],
        ["conntrack", "-D", "-p", "udp", "--orig-src", "192.0.2.1", "--orig-port-src", "40003"],
    ]


def test_the_undo_removes_the_table_then_our_conntrack_entries() -> None:
    runner = RecordingRunner()
    listing = (
        "udp      17 25 src=10.0.1.2 dst=192.0.2.1 sport=51820 dport=40003 src=192.0.2.1 ...\n"
        "udp      17 25 src=10.0.1.2 dst=192.0.2.1 sport=51820 dport=53 src=192.0.2.1 ...\n"
    )
    runner.script(["conntrack", "-L"], stdout=listing)
    spec = {"op": UNDO_OP, "table": NAMES.table, "mark": NAMES.mark,
            "relay_ip": "192.0.2.1", "first": 40000, "last": 49999}  # fmt: skip
    undo_registry.apply(spec, undo.UndoContext(runner))
    commands = runner.commands
    assert commands[0] == ["nft", "-f", "-"]
    assert runner.inputs[0] == "table ip higgsrelay_t1\ndelete table ip higgsrelay_t1\n"
    assert commands[1] == ["conntrack", "-D", "--mark", str(NAMES.mark)]
    assert ["conntrack", "-D", "-p", "udp", "--orig-dst", "192.0.2.1",
            "--orig-port-dst", "40003"] in commands  # fmt: skip
    assert not any("53" in c for c in commands[3:])  # not our range: left alone
