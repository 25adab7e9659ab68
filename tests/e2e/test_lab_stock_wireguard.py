"""The lab proven with stock tools: wireguard-go, wg, ip, nft -- no product code.

The client, fully tunnelled to the node behind the home router's NAT, must appear on the
internet with the home router's public address, for HTTP and for DNS.
"""

from __future__ import annotations

import json

import pytest

from higgs.lab.lab import IPERF_PORT, Lab
from higgs.lab.stock import StockTunnel, StockTunnelConfig
from higgs.lab.wireguard import wg_show

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def lab(shared_lab: Lab) -> Lab:
    """One lab for the module: each test takes its tunnel down again, and only the
    first asks DNS (for names of its own)."""
    return shared_lab


def _queries_for(lab: Lab, name: str) -> list[str]:
    return [q.source for q in lab.wait_dns_queries(name)]


def test_client_exits_from_home_router_through_stock_wireguard(lab: Lab) -> None:
    # Control: without a tunnel, the internet sees the client's own router.
    assert lab.whoami(lab.client)["ip"] == lab.client_router.ip
    assert lab.resolve(lab.client, "example.test") == [lab.internet.ip]
    assert _queries_for(lab, "example.test") == [lab.client_router.ip]

    with StockTunnel(lab) as tunnel:
        assert lab.whoami(lab.client)["ip"] == lab.home_router.ip

        assert lab.resolve(lab.client, "www.example.test") == [lab.internet.ip]
        assert _queries_for(lab, "www.example.test") == [lab.home_router.ip]

        # The packets really took the forwarded port: the node knows the client by the
        # client router's public address, and the client talks to the home router's.
        node_peers = wg_show(lab.node, tunnel.node_if, "endpoints").split()
        assert node_peers[1].split(":")[0] == lab.client_router.ip
        client_peers = wg_show(lab.client, tunnel.client_if, "endpoints").split()
        assert client_peers[1] == tunnel.endpoint
        assert tunnel.latest_handshake("node") > 0

    # Tunnel down: back to the client's own router.
    assert lab.whoami(lab.client)["ip"] == lab.client_router.ip


def test_iperf3_runs_through_the_stock_tunnel(lab: Lab) -> None:
    with StockTunnel(lab):
        result = lab.client.run(
            ["iperf3", "-c", lab.internet.ip, "-p", str(IPERF_PORT), "-n", "2M", "-J"],
            timeout=30,
        )
    report = json.loads(result.stdout)
    assert report["end"]["sum_sent"]["bytes"] >= 2 * 1024 * 1024
    # The receiver's count stops when the sender finishes, so it may lag the bytes sent.
    assert report["end"]["sum_received"]["bytes"] > 0
    # The client's end of the connection is its tunnel address: the data went through wg.
    local = report["start"]["connected"][0]["local_host"]
    assert local == str(StockTunnelConfig().client_address.ip)
