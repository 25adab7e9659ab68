"""Issue 12 items 1-2: a node behind the lab's NAT home router, with no manual port forward,
gets its WireGuard port mapped by the real miniupnpd on that router — by PCP, NAT-PMP and
UPnP-IGD each forced in turn, and by ``auto`` — the server verifies the mapping from outside
and offers it as the direct path, and a stock WireGuard client reaches the internet through
the node on it. The router holds no mapping of ours after stop, after SIGKILL and the next
start, and after SIGKILL and ``higgsnode cleanup``. Without miniupnpd (carrier-grade NAT)
status and diagnose say why, and no direct path is offered.

:class:`TestEveryNatPair` is the done-when's matrix: each pair of NAT types (home/client:
cone/cone, symmetric/cone, cone/symmetric, symmetric/symmetric) with each method forced and
with ``auto``, higgsvpn on a direct path (with cone/cone a stock client too).

One lab for the module; the router without miniupnpd is the last test.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from higgs.lab.errors import LabError
from higgs.lab.lab import Lab
from higgs.lab.miniupnpd import MiniUpnpd, RouterMapping
from higgs.lab.plan import NatType
from higgs.lab.product import NODE_PORT, Product
from higgs.lab.wait import wait_until
from higgs.lab.wireguard import new_keypair, wg_show
from higgs.node.runstate import read_status
from tests.e2e.client_system import Client
from tests.e2e.portmap_kit import port_mapping, restart_after_kill

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


def mapped_in_status_file(product: Product, method: str) -> dict[str, Any]:
    """As :func:`start_mapped` once started, but reads the agent's status file (what
    ``higgsnode status`` prints) instead of running the CLI each poll: its interpreter start-up
    costs seconds on a loaded machine, 16 cases over."""

    def verified() -> dict[str, Any] | None:
        status = read_status(product.node_state_dir) or {}
        pm = dict(status.get("port_mapping") or {})
        return pm if pm.get("verified") else None

    return dict(wait_until(f"a verified {method} mapping", verified, 60, 0.2))


NAT_PAIRS: list[tuple[NatType, NatType]] = [
    ("cone", "cone"),
    ("symmetric", "cone"),
    ("cone", "symmetric"),
    ("symmetric", "symmetric"),
]
# Pair outer, method inner: the routers' NAT type changes 4 times, the node's method 16.
MATRIX = [(home, client, method) for home, client in NAT_PAIRS for method in METHODS]


@pytest.fixture(scope="class")
def vpn(lab: Lab, router: MiniUpnpd, product: Product) -> Iterator[Client]:
    """One higgsvpn (an account of its own) on the client host for the whole matrix; at the
    end the lab's default NATs again, which the module's later tests expect."""
    etc = Path("/etc/netns") / lab.client.ns
    made = not etc.exists()
    etc.mkdir(parents=True, exist_ok=True)
    resolv = etc / "resolv.conf"
    had = resolv.exists()
    if not had:  # what the client had before: never used once connected
        resolv.write_text(f"nameserver {lab.internet.ip}\n")
    assert lab.workdir is not None
    state = lab.workdir / "higgsvpn-matrix"
    token = product.token("vpn")
    client = Client(lab, lab.client, "vpn", token, state, lab.ifname("vm"), product.server_url)
    client.write_config()
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.vpn("cleanup", check=False, timeout=60)
        if not had:
            resolv.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):
                etc.rmdir()
        lab.set_nat("home_router", "cone")
        lab.set_nat("client_router", "cone")


class TestEveryNatPair:
    """Issue 12's done-when, with miniupnpd on the home router: for each pair of NAT types
    (home/client) and each method forced in turn, and ``auto``, higgsvpn's path is direct with
    no manual forward (``higgsvpn status --json``), the node's status names the method, a ping
    and whoami go through the node, and after stop the router holds no mapping of ours. With
    cone/cone a stock WireGuard client takes the same mapping too.

    One lab (the module's) for the matrix: the routers' NAT type is switched per pair
    (``Lab.set_nat``, which flushes their connection tracking) and the node restarted with the
    next ``--port-mapping`` per case, keeping its identity (no enrollment per case). Why direct
    works with every pair: the mapping's DNAT takes the client's packets to the node whatever
    port the client's NAT chose, and the node's answers are that connection's replies, which
    the home router never maps anew (docs/node.md)."""

    @pytest.mark.parametrize(("home", "client_nat", "method"), MATRIX,
                             ids=[f"{h}-{c}-{m}" for h, c, m in MATRIX])  # fmt: skip
    def test_direct_path_without_a_forward(
        self,
        lab: Lab,
        router: MiniUpnpd,
        product: Product,
        vpn: Client,
        home: NatType,
        client_nat: NatType,
        method: str,
    ) -> None:
        started = time.monotonic()
        lab.set_nat("home_router", home)
        lab.set_nat("client_router", client_nat)
        public = lab.home_router.addr("wan0")
        expected = "pcp" if method == "auto" else method
        enrolled = (product.node_state_dir / "identity.json").exists()
        try:
            product.start_node(direct=False, flags=["--port-mapping", method], enroll=not enrolled)
            pm = mapped_in_status_file(product, method)
            mapped_s = time.monotonic() - started
            assert pm["method"] == expected
            assert pm["external_endpoint"] == f"{public}:{NODE_PORT}"
            assert ours(router, lab), router.mappings()
            if (home, client_nat) == ("cone", "cone"):
                self._stock_client_too(lab, product, public)
            with ThreadPoolExecutor(2) as pool:
                # `higgsnode status` (seconds of interpreter start-up) beside the connect.
                text = pool.submit(lambda: product.node_cli("status").stdout)
                product.wait_node_online()
                answer = vpn.connect()
                assert answer["mode"] == "direct", answer
                assert f"{public}:{NODE_PORT} by {expected} on " in text.result(), text.result()
                status = pool.submit(vpn.status)
                ping = vpn.host.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", lab.internet.ip],
                                    check=False)  # fmt: skip
                assert ping.returncode == 0, ping.stdout
                assert lab.whoami(vpn.host)["ip"] == public
                # Direct, not relayed: the node hears the client from the client's router.
                endpoints = wg_show(lab.node, product.node_if, "endpoints")
                assert f"{lab.client_router.addr('wan0')}:" in endpoints, endpoints
                assert status.result()["mode"] == "direct", status.result()
            with ThreadPoolExecutor(1) as pool:
                # Each takes seconds (an interpreter start, the node's teardown): side by side.
                gone = pool.submit(vpn.disconnect)
                assert product.stop_node() == 0
                gone.result()
            assert ours(router, lab) == []
        except Exception as exc:
            exc.add_note(lab.log_tails(40))
            raise
        finally:
            if vpn.connected:
                vpn.vpn("disconnect", check=False, timeout=60)
                vpn.connected = False
            if product.node_proc is not None and product.node_proc.alive():
                product.stop_node()
        print(f"{home}/{client_nat} {method}: direct; mapped and verified after "
              f"{mapped_s:.1f} s, case {time.monotonic() - started:.1f} s")  # fmt: skip

    @staticmethod
    def _stock_client_too(lab: Lab, product: Product, public: str) -> None:
        """The server offers the verified mapping to a stock WireGuard client as well."""
        client = product.connect_stock(lab.client, name="client")
        try:
            assert client.endpoint == f"{public}:{NODE_PORT}"
            assert lab.whoami(lab.client)["ip"] == public
        finally:
            client.down()
            product.clients.remove(client)


@pytest.mark.parametrize(("method", "then"), [("pcp", "restart"), ("natpmp", "cleanup"),
                                             ("upnp", "restart"), ("upnp", "cleanup")])  # fmt: skip
def test_sigkill_leaves_no_mapping_after_restart_or_cleanup(
    lab: Lab, router: MiniUpnpd, product: Product, method: str, then: str
) -> None:
    start_mapped(product, method)
    product.kill_node()
    assert ours(router, lab), "the killed node's mapping should still be on the router"
    if then == "cleanup":
        done = product.node_cli("cleanup")
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        restart_after_kill(product)
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
