"""The path-MTU probe on a real path, and large transfers across a link with a smaller MTU.

node -> home_router -> core -> internet, with the home router's uplink (wan0 <-> core
to-home) set to 1400 bytes: the probe must find 1400 whether or not the home router sends
ICMP "fragmentation needed" (a black hole is bisected by replies alone).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from higgs.lab.lab import Lab
from higgs.lab.services.whoami import payload_sha256
from higgs.lab.stock import StockTunnel, StockTunnelConfig
from higgs.osnet.mtu import probe_path_mtu, tunnel_mtu
from higgs.osnet.runner import SubprocessRunner

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SMALL = 1400
BLACK_HOLE = "hl_blackhole"


@pytest.fixture
def lab(shared_lab: Lab) -> Iterator[Lab]:
    """The module's lab, handed to each test as a fresh one would be: afterwards the home
    uplink is back at 1500 bytes, the black hole is gone and no host remembers a path MTU it
    learnt (a cached "fragmentation needed" would answer the next probe by itself)."""
    yield shared_lab
    shared_lab.set_mtu("home_router", "wan0", 1500)
    shared_lab.home_router.run(["nft", "delete", "table", "ip", BLACK_HOLE], check=False)
    for role in ("node", "home_router", "core", "internet", "client_router", "client"):
        shared_lab.host(role).run(["ip", "route", "flush", "cache"])


def test_set_mtu_changes_both_ends_of_the_link(lab: Lab) -> None:
    assert lab.mtu("home_router", "wan0") == 1500
    lab.set_mtu("home_router", "wan0", SMALL)
    assert lab.mtu("home_router", "wan0") == SMALL
    assert lab.mtu("core", "to-home") == SMALL
    assert lab.mtu("node", "eth0") == 1500  # the node's own link is untouched


def test_probe_finds_the_smaller_link_in_the_middle_of_the_path(lab: Lab) -> None:
    runner = SubprocessRunner(netns=lab.node.ns)
    assert probe_path_mtu(lab.internet.ip, runner, max_mtu=1500) == 1500
    lab.set_mtu("home_router", "wan0", SMALL)
    # The node just sent 1500-byte packets that fitted; now the router's ICMP corrects it.
    assert probe_path_mtu(lab.internet.ip, runner, max_mtu=1500) == SMALL
    assert tunnel_mtu(1500, ("udp4",), path_mtu=SMALL).mtu == SMALL - 60


def test_probe_finds_the_mtu_of_a_black_hole_path(lab: Lab) -> None:
    lab.set_mtu("home_router", "wan0", SMALL)
    # The home router swallows its own "fragmentation needed" errors: nothing tells the node.
    lab.home_router.nft(
        f"table ip {BLACK_HOLE} {{\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy accept;\n"
        "    icmp type destination-unreachable icmp code frag-needed drop\n"
        "  }\n"
        "}\n"
    )
    runner = SubprocessRunner(netns=lab.node.ns)
    assert probe_path_mtu(lab.internet.ip, runner, max_mtu=1500, attempts=1) == SMALL


def test_probe_of_an_address_nobody_answers_gives_none(lab: Lab) -> None:
    runner = SubprocessRunner(netns=lab.node.ns)
    # 192.0.2.99 is inside the lab's internet segment, where no host has that address.
    assert probe_path_mtu("192.0.2.99", runner, attempts=1) is None


def test_large_download_through_a_stock_tunnel_across_a_smaller_link(lab: Lab) -> None:
    lab.set_mtu("home_router", "wan0", SMALL)
    mtu = tunnel_mtu(1500, ("udp4",), path_mtu=SMALL).mtu
    with StockTunnel(lab, StockTunnelConfig(mtu=mtu)):
        size = 20 << 20
        got = lab.download(lab.client, size)
    assert got.nbytes == size
    assert got.sha256 == payload_sha256(size)
