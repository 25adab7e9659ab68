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


def test_a_clients_ipv6_traffic_lands_in_its_own_class(netns: str, tmp_path: Path) -> None:
    """With NAT66 the client's IPv6 address (same host number) is classified like its IPv4."""
    import ipaddress

    settings = load_node_settings(
        environ={},
        overrides={"interface": "tun0", "max_clients": 4, "shaping": {"per_client_mbit": 6}},
    )
    net6 = ipaddress.IPv6Network("fd12:3456:789a::/64")
    runner = SubprocessRunner(netns=netns)

    def ns(*argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True)

    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        shaper = Shaper(plan_for(settings, net6), journal, runner)
        shaper.setup()
        shaper.update(["10.77.0.5/32", "10.77.0.6/32"])
        filters = tc(netns, "filter", "show", "dev", "tun0", "parent", "1:")
        assert "801::15" in filters
        assert "801::16" in filters
        # Packets to fd12:3456:789a::5 leave tun0 (a static neighbour: nobody answers ND).
        ns("ip", "link", "set", "tun1", "up")  # else tun0 has no carrier and sends nothing
        ns("ip", "addr", "add", "fd12:3456:789a::1/64", "dev", "tun0", "nodad")
        ns("ip", "-6", "neigh", "add", "fd12:3456:789a::5", "lladdr", "02:00:00:00:00:05",
           "dev", "tun0")  # fmt: skip
        subprocess.run(
            ["ip", "netns", "exec", netns, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "1",
             "fd12:3456:789a::5"],
            check=False, capture_output=True,
        )  # fmt: skip
        stats = tc(netns, "-s", "class", "show", "dev", "tun0", "classid", "1:15")
        sent = int(stats.split("Sent ")[1].split()[0])
        assert sent >= 3 * 100, stats  # three echo requests of 104 bytes and more
        shaper.update(["10.77.0.6/32"])
        filters = tc(netns, "filter", "show", "dev", "tun0", "parent", "1:")
        assert "801::15" not in filters
        assert "801::16" in filters
        journal.undo_all()
