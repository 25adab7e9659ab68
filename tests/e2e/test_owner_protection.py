"""What a person lending their home connection needs (issue 6), checked with the real
programs: bosonserver in the server's namespace, higgsnode in the node's behind the home
router (UDP port-forwarded), and a stock WireGuard client configured from the route answer.

Every address is the lab's own: the "internet" is 192.0.2.10, the owner's LAN 192.168.1.0/24.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from higgs.lab.errors import CommandError
from higgs.lab.lab import PRINTER_PORT, Lab
from higgs.lab.procs import LabProcess, pids_mentioning
from higgs.lab.product import Product, serving_stock_clients
from higgs.lab.stock import StockClient, StockTunnel

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ADMIN_PORT = 80  # the home router's web interface, on its LAN address
NODE_SERVICE_PORT = 8022  # something the owner runs on the node machine itself


def _connects(host_sock: socket.socket, addr: str, port: int, timeout: float = 3.0) -> bytes:
    """Connect and read the banner; raises OSError when the connection does not happen."""
    with host_sock as sock:
        sock.settimeout(timeout)
        sock.connect((addr, port))
        return sock.recv(100)


def _blocked(lab: Lab, host_role: str, addr: str, port: int) -> bool:
    try:
        _connects(lab.host(host_role).socket(), addr, port)
    except OSError:
        return True
    return False


def _listener(lab: Lab, role: str, addr: str, port: int, banner: str) -> LabProcess:
    proc = lab.host(role).popen(
        [sys.executable, "-m", "higgs.lab.services.listen", "--host", addr, "--port", str(port),
         "--banner", banner],
        name=f"listen-{port}",
    )  # fmt: skip
    proc.wait_listening(port)
    return proc


@dataclass
class Exit:
    """One node serving one stock client, shared by the tests that only look (they change
    nothing the others depend on); the owner's router admin page and a service on the node
    machine itself are running, as the owner's real ones would."""

    lab: Lab
    product: Product
    client: StockClient


@pytest.fixture(scope="module")
def exit_node() -> Iterator[Exit]:
    lab = Lab().build()
    try:
        _listener(lab, "home_router", lab.home_router.addr("lan0"), ADMIN_PORT, "admin")
        _listener(lab, "node", "0.0.0.0", NODE_SERVICE_PORT, "owner's service")
        with serving_stock_clients(lab, [lab.client]) as (product, (client,)):
            yield Exit(lab, product, client)
    finally:
        lab.teardown()
    assert not lab.leftovers()


def test_names_resolve_through_the_tunnel_and_leave_from_the_home_router(
    exit_node: Exit,
) -> None:
    lab, client = exit_node.lab, exit_node.client
    assert client.dns, "the route answer pushed no DNS server"
    resolver = client.dns[0]
    # The pushed resolver is the node's forwarder, inside the tunnel.
    route = lab.client.run(["ip", "route", "get", resolver]).stdout.split()
    assert route[route.index("dev") + 1] == client.ifname, route
    assert lab.resolve(lab.client, "www.example.test", server=resolver) == [lab.internet.ip]
    asked = {q.source.split("#")[0] for q in lab.wait_dns_queries("www.example.test")}
    assert asked == {lab.home_router.ip}


def test_a_client_asking_another_resolver_is_answered_by_the_node(exit_node: Exit) -> None:
    lab = exit_node.lab
    # 198.51.100.10 (bosonserver's host) runs no DNS server: from outside the tunnel (the
    # client's router, on the same side of the internet) nothing answers there.
    with pytest.raises(CommandError):
        lab.resolve(lab.client_router, "server.example.test", server=lab.server.ip, timeout=2)
    # Through the tunnel the same question is intercepted and answered by the node's forwarder,
    # which asks its upstream from the home router's address.
    answer = lab.resolve(lab.client, "server.example.test", server=lab.server.ip)
    assert answer == [lab.server.ip]
    asked = {q.source.split("#")[0] for q in lab.wait_dns_queries("server.example.test")}
    assert asked == {lab.home_router.ip}
    # DNS over TCP is intercepted too (port 53 of any address, both protocols).
    with pytest.raises(CommandError):
        lab.resolve(lab.client_router, "example.test", server=lab.server.ip, tcp=True, timeout=2)
    assert lab.resolve(lab.client, "example.test", server=lab.server.ip, tcp=True) == [
        lab.internet.ip
    ]
    assert {q.source.split("#")[0] for q in lab.wait_dns_queries("example.test")} == {
        lab.home_router.ip
    }


def test_the_owners_lan_and_the_node_itself_are_unreachable_while_the_internet_works(
    exit_node: Exit,
) -> None:
    lab, client = exit_node.lab, exit_node.client
    home_lan = lab.home_router.addr("lan0")
    # The owner's own machines reach them: the services are there.
    assert _connects(lab.node.socket(), lab.printer.ip, PRINTER_PORT).startswith(b"printer")
    assert _connects(lab.node.socket(), home_lan, ADMIN_PORT).startswith(b"admin")
    printer = next(p for p in lab.processes if p.name == "printer")
    seen_before = printer.log_text().count("connection to port")

    assert lab.whoami(lab.client)["ip"] == lab.home_router.ip  # the internet works
    for addr in (lab.printer.ip, home_lan, lab.node.ip):
        # The packets do go into the tunnel (the client's own routes would not reach them)...
        route = lab.client.run(["ip", "route", "get", addr]).stdout.split()
        assert route[route.index("dev") + 1] == client.ifname, route
    # ... and the node does not forward them.
    assert _blocked(lab, "client", lab.printer.ip, PRINTER_PORT)
    assert _blocked(lab, "client", home_lan, ADMIN_PORT)
    assert _blocked(lab, "client", lab.node.ip, NODE_SERVICE_PORT)
    node_tunnel_ip = client.dns[0]
    assert _blocked(lab, "client", node_tunnel_ip, NODE_SERVICE_PORT)
    ping = lab.client.run(["ping", "-c", "1", "-W", "2", home_lan], check=False)
    assert ping.returncode != 0
    assert printer.log_text().count("connection to port") == seen_before, printer.log_text()
    assert lab.whoami(lab.client)["ip"] == lab.home_router.ip  # and still works


def test_smtp_25_is_blocked_while_587_works(exit_node: Exit) -> None:
    lab = exit_node.lab
    assert lab.whoami(lab.client)["ip"] == lab.home_router.ip
    assert _connects(lab.client.socket(), lab.internet.ip, 587).startswith(b"220")
    assert _blocked(lab, "client", lab.internet.ip, 25)
    smtp_log = next(p for p in lab.processes if p.name == "smtp").log_text()
    assert "connection to port 587" in smtp_log
    assert "connection to port 25 " not in smtp_log


def test_without_owner_protection_the_lab_lets_all_of_it_through(lab: Lab) -> None:
    """The control: a bare WireGuard exit (stock tools, no protection) in the same lab reaches
    the printer and port 25, so the blocks above are the node's doing, not the lab's."""
    with StockTunnel(lab):
        assert _connects(lab.client.socket(), lab.printer.ip, PRINTER_PORT).startswith(b"printer")
        assert _connects(lab.client.socket(), lab.internet.ip, 25).startswith(b"220")


def test_the_owners_exceptions_open_exactly_what_they_name(lab: Lab) -> None:
    """The owner shares the printer and moves the port block from 25 to 587: the printer is
    reachable, the rest of the LAN still is not, and the port rules follow the config."""
    product = Product(lab)
    _listener(lab, "home_router", lab.home_router.addr("lan0"), ADMIN_PORT, "admin")
    product.start_server()
    product.provision("client")
    product.start_node(
        config=f'[protection]\nallow = ["{lab.printer.ip}/32"]\nblocked_tcp_ports = [587]\n'
    )
    try:
        product.wait_node_online()
        product.connect_stock(lab.client)
        assert lab.whoami(lab.client)["ip"] == lab.home_router.ip
        reply = _connects(lab.client.socket(), lab.printer.ip, PRINTER_PORT)
        assert reply.startswith(b"printer")
        printer = next(p for p in lab.processes if p.name == "printer")
        # Masqueraded on the uplink: the printer sees the node machine's LAN address.
        assert f"from {lab.node.ip}:" in printer.log_text(), printer.log_text()
        assert _blocked(lab, "client", lab.home_router.addr("lan0"), ADMIN_PORT)
        assert _connects(lab.client.socket(), lab.internet.ip, 25).startswith(b"220")
        assert _blocked(lab, "client", lab.internet.ip, 587)
    except Exception as exc:
        exc.add_note("process logs:\n" + lab.log_tails(40))
        raise
    finally:
        assert product.stop_node() == 0


def test_after_stop_nothing_of_it_remains(lab: Lab) -> None:
    from higgs.osnet import hoststate

    product = Product(lab)
    product.start_server()
    product.provision("client")
    before = hoststate.snapshot(netns=lab.node.ns)
    product.start_node(config="[shaping]\ntotal_down_mbit = 20\ntotal_up_mbit = 20\n")
    try:
        product.wait_node_online()
        client = product.connect_stock(lab.client)
        assert lab.whoami(lab.client)["ip"] == lab.home_router.ip
        lab.resolve(lab.client, "www.example.test", server=client.dns[0])
        during = hoststate.snapshot(netns=lab.node.ns)
        assert before.diff(during), "the node changed nothing on its host?"
    except Exception as exc:
        exc.add_note("process logs:\n" + lab.log_tails(40))
        raise
    finally:
        code = product.stop_node()
    assert code == 0, product.node_proc.log_text()[-3000:] if product.node_proc else ""
    after = hoststate.snapshot(netns=lab.node.ns)
    assert before.diff(after) == ""
    assert lab.node.run(["ip", "link", "show", product.node_if], check=False).returncode != 0
    assert not Path(f"/var/run/wireguard/{product.node_if}.sock").exists()
    assert pids_mentioning(product.node_if) == {}  # wireguard-go and the rest are gone
