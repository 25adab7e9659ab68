"""The real higgsnode sizes its tunnel to its uplink (issue 6 item 2): with no ``mtu``
configured, a node whose own link carries 1400 bytes gives its WireGuard interface
1400 - 60 = 1340 (direct IPv4 and the relay both cost 60 bytes), and its clients get the
same figure in their config; when the uplink's MTU changes, the interface follows and so do
the configs of clients that connect afterwards."""

from __future__ import annotations

import json
import time

import pytest

from higgs.lab.errors import CommandError, LabError
from higgs.lab.lab import Lab
from higgs.lab.product import Product
from higgs.lab.services.whoami import payload_sha256
from higgs.lab.wireguard import new_keypair

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SMALL = 1400
SMALLER = 1360
OVERHEAD = 60  # outer IPv4 20 + UDP 8 + WireGuard 32 (osnet.mtu)
SIZE = 4 << 20


def _wait(what: str, check: object, timeout: float = 30.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def _mtu(lab: Lab, role: str, ifname: str) -> int | None:
    try:
        return lab.mtu(role, ifname)
    except CommandError:
        return None


def test_the_tunnel_mtu_follows_a_small_uplink(lab: Lab) -> None:
    lab.set_mtu("node", "eth0", SMALL)  # the node's own link to the home router
    product = Product(lab)
    try:
        product.start_server()
        product.provision("client")
        product.start_node()  # no `mtu` in the config: automatic
        product.wait_node_online()
        # Online means registered, which comes before the interface is set up.
        _wait(
            f"the node's interface with MTU {SMALL - OVERHEAD}",
            lambda: _mtu(lab, "node", product.node_if) == SMALL - OVERHEAD,
        )
        client = product.connect_stock(lab.client)
        assert client.mtu == SMALL - OVERHEAD  # the route answer carries the node's figure
        assert lab.mtu("client", client.ifname) == SMALL - OVERHEAD
        got = lab.download(lab.client, SIZE)
        assert (got.nbytes, got.sha256) == (SIZE, payload_sha256(SIZE))

        # The uplink shrinks while the node runs: the interface follows...
        lab.set_mtu("node", "eth0", SMALLER)
        _wait(
            "the node's interface to follow the uplink",
            lambda: lab.mtu("node", product.node_if) == SMALLER - OVERHEAD,
        )
        # ... and the server hears of it at once (a heartbeat): the next route answers say so.
        token = product.token("client")

        def route_mtu() -> bool:
            try:
                answer = product.route(lab.client, token, new_keypair().public)
            except LabError:
                return False
            return int(answer["wireguard"]["mtu"]) == SMALLER - OVERHEAD

        _wait("a route answer with the new MTU", route_mtu, timeout=20)
        # A client that reconnects gets it on its interface.
        client.down()
        client = product.connect_stock(lab.client)
        assert lab.mtu("client", client.ifname) == SMALLER - OVERHEAD
        got = lab.download(lab.client, SIZE)
        assert (got.nbytes, got.sha256) == (SIZE, payload_sha256(SIZE))
        _wait(
            "`higgsnode status` to show the new MTU",
            lambda: (
                json.loads(product.node_cli("status", "--json").stdout)["status"]["mtu"]["mtu"]
                == SMALLER - OVERHEAD
            ),
            timeout=10,
        )
    except Exception as exc:
        exc.add_note("process logs:\n" + lab.log_tails(40))
        raise
    finally:
        product.stop_node()
