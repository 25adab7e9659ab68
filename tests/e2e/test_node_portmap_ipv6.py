"""Issue 12 item 1, IPv6: where the home router offers it (miniupnpd serving PCP, or UPnP's
WANIPv6FirewallControl, on its LAN's IPv6 address), the node also opens a pinhole for its
WireGuard port on its global IPv6 address — best effort, shown by status — and closes it on
stop, and after SIGKILL the next start or `higgsnode cleanup` closes it. Each method forced in
turn, the router offering only that one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from higgs.lab.lab import Lab
from higgs.lab.miniupnpd import MiniUpnpd
from higgs.lab.product import NODE_PORT, Product
from tests.e2e.portmap_kit import port_mapping, restart_after_kill

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


def wait_pinhole(product: Product) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while not (pm := port_mapping(product)).get("ipv6_pinhole", {}).get("endpoint"):
        assert time.monotonic() < deadline, f"no IPv6 pinhole: {pm}"
        time.sleep(0.5)
    return pm


def router_for(lab: Lab, method: str) -> MiniUpnpd:
    """The router offering only ``method`` (PCP rides on miniupnpd's NAT-PMP port)."""
    upnp = method == "upnp"
    return MiniUpnpd(lab, upnp=upnp, natpmp=not upnp, ipv6=True).start()


def start_pinholed(product: Product, method: str) -> None:
    product.start_server()
    product.provision("client")
    product.start_node(direct=False, flags=["--port-mapping", method])
    product.wait_node_online()


@pytest.mark.parametrize("method", ["pcp", "upnp"])
def test_the_method_opens_an_ipv6_pinhole_and_stop_closes_it(lab: Lab, method: str) -> None:
    router, product = router_for(lab, method), Product(lab)
    try:
        start_pinholed(product, method)
        pm = wait_pinhole(product)
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


@pytest.mark.parametrize(("method", "then"), [("pcp", "cleanup"), ("upnp", "restart")])
def test_sigkill_leaves_no_pinhole_after_restart_or_cleanup(
    lab: Lab, method: str, then: str
) -> None:
    """The pinhole is journaled like the IPv4 mapping: a SIGKILLed node leaves it on the router,
    and the next start (or ``cleanup``) removes it, whichever method opened it."""
    router, product = router_for(lab, method), Product(lab)
    try:
        start_pinholed(product, method)
        wait_pinhole(product)
        product.kill_node()
        assert router.pinholes() == [lab.node.ip6], "the killed node's pinhole should remain"
        if then == "cleanup":
            done = product.node_cli("cleanup")
            assert done.returncode == 0, done.stdout + done.stderr
        else:
            restart_after_kill(product)
            assert router.pinholes() == []
            assert product.stop_node() == 0
    except Exception as exc:
        exc.add_note(lab.log_tails(40))
        raise
    finally:
        if product.node_proc is not None:
            product.stop_node()
    assert router.pinholes() == []
    assert router.mappings() == []
