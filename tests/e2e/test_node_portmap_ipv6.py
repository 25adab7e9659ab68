"""Issue 12 item 1, IPv6: where the home router offers it (miniupnpd serving PCP, or UPnP's
WANIPv6FirewallControl, on its LAN's IPv6 address), the node also opens a pinhole for its
WireGuard port on its global IPv6 address — best effort, shown by status — and closes it on
stop. Each method forced in turn, the router offering only that one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from higgs.lab.lab import Lab
from higgs.lab.miniupnpd import MiniUpnpd
from higgs.lab.product import NODE_PORT, Product

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(ipv6=True).build()
    try:
        yield lab
    finally:
        lab.teardown()
    left = lab.leftovers()
    assert not left, f"lab {lab.names.stem} left behind: {left}"


def port_mapping(product: Product) -> dict[str, Any]:
    try:
        status = json.loads(product.node_cli("status", "--json").stdout).get("status") or {}
    except ValueError:
        return {}
    return dict(status.get("port_mapping") or {})


@pytest.mark.parametrize("method", ["pcp", "upnp"])
def test_the_method_opens_an_ipv6_pinhole_and_stop_closes_it(lab: Lab, method: str) -> None:
    upnp = method == "upnp"
    router = MiniUpnpd(lab, upnp=upnp, natpmp=not upnp, ipv6=True).start()
    product = Product(lab)
    try:
        product.start_server()
        product.provision("client")
        product.start_node(direct=False, flags=["--port-mapping", method])
        product.wait_node_online()
        deadline = time.monotonic() + 60
        while not (pm := port_mapping(product)).get("ipv6_pinhole", {}).get("endpoint"):
            assert time.monotonic() < deadline, f"no IPv6 pinhole: {pm}"
            time.sleep(0.5)
        assert pm["ipv6_pinhole"]["endpoint"] == f"[{lab.node.ip6}]:{NODE_PORT}"
        assert pm["ipv6_pinhole"]["method"] == method
        assert pm["method"] == method  # the IPv4 mapping too
        assert router.pinholes() == [lab.node.ip6]
        assert "IPv6 pinhole" in product.node_cli("status").stdout
    except Exception as exc:
        exc.add_note(lab.log_tails(40))
        raise
    finally:
        code = product.stop_node()
    assert code == 0
    assert router.pinholes() == []
    assert router.mappings() == []
