"""Issue 12 items 1-2: a node behind the lab's NAT home router, with no manual port forward,
gets its WireGuard port mapped by the real miniupnpd on that router — by PCP, NAT-PMP and
UPnP-IGD each forced in turn, and by ``auto`` — the server verifies the mapping from outside
and offers it as the direct path, and a stock WireGuard client reaches the internet through
the node on it. The router holds no mapping of ours after stop, after SIGKILL and the next
start, and after SIGKILL and ``higgsnode cleanup``. Without miniupnpd (carrier-grade NAT)
status and diagnose say why, and no direct path is offered.

One lab for the module; the router without miniupnpd is the last test.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from higgs.lab.errors import LabError
from higgs.lab.lab import Lab
from higgs.lab.miniupnpd import MiniUpnpd, RouterMapping
from higgs.lab.product import NODE_PORT, Product
from higgs.lab.wait import wait_until
from higgs.lab.wireguard import new_keypair, wg_show

pytestmark = [pytest.mark.e2e, pytest.mark.root]

METHODS = ["pcp", "natpmp", "upnp", "auto"]


@pytest.fixture(scope="module")
def lab(shared_lab: Lab) -> Lab:
    return shared_lab


@pytest.fixture(scope="module")
def router(lab: Lab) -> MiniUpnpd:
    return MiniUpnpd(lab, upnp=True, natpmp=True).start()


@pytest.fixture(scope="module")
def product(lab: Lab, router: MiniUpnpd) -> Product:
    product = Product(lab)
    try:
        product.start_server()
        product.provision("client")
    except Exception as exc:
        exc.add_note(lab.log_tails(40))
        raise
    return product


def node_status(product: Product) -> dict[str, Any]:
    out = product.node_cli("status", "--json").stdout
    try:
        return dict(json.loads(out).get("status") or {})
    except ValueError:
        return {}


def port_mapping(product: Product) -> dict[str, Any]:
    return dict(node_status(product).get("port_mapping") or {})


def ours(router: MiniUpnpd, lab: Lab) -> list[RouterMapping]:
    return [m for m in router.mappings() if m.to_addr == lab.node.ip and m.to_port == NODE_PORT]


def start_mapped(product: Product, method: str) -> dict[str, Any]:
    """A node with ``--port-mapping method`` and no forward; waits until the server verified
    the mapping; returns the node's port_mapping status."""
    product.start_node(direct=False, flags=["--port-mapping", method])
    try:
        product.wait_node_online()
        return dict(
            wait_until(
                f"a verified {method} mapping",
                lambda: (pm := port_mapping(product)).get("verified") and pm,
                60,
                0.5,
            )
        )
    except Exception as exc:
        exc.add_note(product.lab.log_tails(40))
        raise


def kill_node(product: Product) -> None:
    assert product.node_proc is not None
    product.node_proc.popen.send_signal(signal.SIGKILL)
    product.node_proc.popen.wait(30)


@pytest.mark.parametrize("method", METHODS)
def test_mapping_gives_a_verified_direct_path(
    lab: Lab, router: MiniUpnpd, product: Product, method: str
) -> None:
    public = lab.home_router.addr("wan0")
    pm = start_mapped(product, method)
    assert pm["method"] == ("pcp" if method == "auto" else method)
    assert pm["external_endpoint"] == f"{public}:{NODE_PORT}"
    assert ours(router, lab), router.mappings()
    # The server offers the mapping as the direct path only now; a stock client uses it.
    client = product.connect_stock(lab.client, name="client")
    try:
        assert client.endpoint == f"{public}:{NODE_PORT}"
        assert lab.whoami(lab.client)["ip"] == public
        # Direct, not relayed: the node's WireGuard hears the client from the client's router
        # (through the relay it would hear the server's address).
        endpoints = wg_show(lab.node, product.node_if, "endpoints")
        assert f"{lab.client_router.addr('wan0')}:" in endpoints, endpoints
    finally:
        client.down()
        product.clients.remove(client)
    assert product.stop_node() == 0
    assert ours(router, lab) == []


@pytest.mark.parametrize(("method", "then"), [("pcp", "restart"), ("natpmp", "cleanup"),
                                             ("upnp", "restart"), ("upnp", "cleanup")])  # fmt: skip
def test_sigkill_leaves_no_mapping_after_restart_or_cleanup(
    lab: Lab, router: MiniUpnpd, product: Product, method: str, then: str
) -> None:
    start_mapped(product, method)
    kill_node(product)
    assert ours(router, lab), "the killed node's mapping should still be on the router"
    if then == "cleanup":
        done = product.node_cli("cleanup")
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        # The next start undoes the journal first; "off" so it maps nothing itself.
        product.start_node(direct=False, flags=["--port-mapping", "off"])
        # (The server still lists the killed run as online: wait for the new run itself.)
        wait_until(
            "the new run online",
            lambda: node_status(product).get("server", {}).get("state") == "online",
            60,
            0.5,
        )
        assert ours(router, lab) == []
        assert product.stop_node() == 0
    assert ours(router, lab) == []
    assert "higgsnode" not in router.leases()
    assert "PCP MAP" not in router.leases()


def test_the_client_router_variant_maps_for_its_lan(lab: Lab) -> None:
    """The client's router can run miniupnpd too (NAT-PMP/PCP only here): a client host gets
    a mapping by NAT-PMP, and the router holds none after it is deleted."""
    client_router = MiniUpnpd(lab, router="client_router", upnp=False, natpmp=True).start()
    try:
        gw = lab.client_router.addr("lan0")
        natpmpc = ["natpmpc", "-g", gw, "-a", "40000", "40000", "udp"]
        out = lab.client.run([*natpmpc, "300"]).stdout
        assert "Mapped public port 40000 protocol UDP" in out, out
        assert client_router.mappings() == [RouterMapping("udp", 40000, lab.client.ip, 40000)]
        lab.client.run([*natpmpc, "0"])
        assert client_router.mappings() == []
    finally:
        client_router.stop()


def test_without_a_mapping_router_no_direct_path_and_status_says_why(
    lab: Lab, router: MiniUpnpd, product: Product
) -> None:
    router.stop()  # the home router is now a plain NAT (like carrier-grade NAT)
    product.start_node(direct=False, flags=["--port-mapping", "auto"])
    try:
        product.wait_node_online()
        pm = wait_until(
            "a failed mapping round",
            lambda: (p := port_mapping(product)).get("state") == "failed" and p,
            60,
            0.5,
        )
        reasons = {a["method"]: a["reason"] for a in pm["attempts"]}
        assert set(reasons) == {"pcp", "natpmp", "upnp"}, pm
        text = product.node_cli("status").stdout
        assert "port map   none (pcp:" in text, text
        diag = json.loads(product.node_cli("diagnose", "--json").stdout)
        check = next(c for c in diag if c["name"] == "port_mapping")
        assert check["warn"]  # the node works (relayed); direct mode does not
        assert "pcp" in check["detail"]
        assert "upnp" in check["detail"]
        assert "forward UDP port" in check["fix"]
        # No direct path: a direct-only route is refused, an auto route is relay only.
        keys = new_keypair()
        with pytest.raises(LabError, match="node has no direct endpoint"):
            product.route(lab.client, product.token("client"), keys.public, mode="direct")
        answer = product.route(lab.client, product.token("client"), keys.public, mode="auto")
        assert not answer.get("direct"), answer
    except Exception as exc:
        exc.add_note(lab.log_tails(40))
        raise
    finally:
        product.stop_node()
