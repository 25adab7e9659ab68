"""The node's shaper on a real interface with real tc, in a namespace of the test's own."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from higgs.node.settings import load_node_settings
from higgs.node.shaping import Shaper, plan_for
from higgs.osnet.journal import Journal
from higgs.osnet.runner import SubprocessRunner

pytestmark = pytest.mark.root


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"hnsh-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "tun0", "type", "veth", "peer", "name", "tun1"],
            check=True,
        )
        subprocess.run(["ip", "-n", name, "link", "set", "tun0", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def tc(ns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True, check=True
    ).stdout


def links(ns: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout


def test_classes_follow_the_clients_and_stop_removes_everything(netns: str, tmp_path: Path) -> None:
    settings = load_node_settings(
        environ={},
        overrides={
            "interface": "tun0",
            "max_clients": 4,
            "shaping": {"total_down_mbit": 20, "total_up_mbit": 10, "per_client_mbit": 6},
        },
    )
    runner = SubprocessRunner(netns=netns)
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        shaper = Shaper(plan_for(settings), journal, runner)
        shaper.setup()
        assert "ifb-tun0" in links(netns)
        assert "rate 20Mbit ceil 20Mbit" in tc(netns, "class", "show", "dev", "tun0")
        assert "rate 10Mbit ceil 10Mbit" in tc(netns, "class", "show", "dev", "ifb-tun0")
        assert "mirred" in tc(netns, "filter", "show", "dev", "tun0", "ingress")

        shaper.update(["10.77.0.5/32", "10.77.0.6/32"])
        down = tc(netns, "class", "show", "dev", "tun0")
        assert "class htb 1:15 parent 1:1" in down
        assert "class htb 1:16 parent 1:1" in down
        assert "ceil 6Mbit" in down
        assert "flowid 1:15" in tc(netns, "filter", "show", "dev", "ifb-tun0", "parent", "1:")

        shaper.update(["10.77.0.6/32"])
        down = tc(netns, "class", "show", "dev", "tun0")
        assert "1:15" not in down
        assert "1:16" in down
        assert "1:15" not in tc(netns, "filter", "show", "dev", "tun0", "parent", "1:")

        journal.undo_all()
        assert "ifb-tun0" not in links(netns)
