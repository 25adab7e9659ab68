"""higgsvpn in direct mode: the home router forwards the node's WireGuard port."""

from __future__ import annotations

import re
import time

from higgs.lab import start_wireguard_go
from higgs.lab.product import NODE_PORT
from tests.e2e.client_system import System, check_tunnel, client_public, home_public, wait_until
from tests.e2e.conftest import PRODUCT_MARKS, export_fields, system_fixtures, wg_setconf_text

pytestmark = PRODUCT_MARKS

direct_system, direct = system_fixtures("direct", direct=True)


def test_direct_mode_through_port_forward_bypasses_the_relay(direct: System) -> None:
    lab = direct.lab
    client = direct.client()
    before = direct.server.relayed_datagrams()
    answer = client.connect("--mode", "direct")
    assert answer["mode"] == "direct"
    check_tunnel(direct, client)
    assert client.status()["mode"] == "direct"
    assert direct.server.relayed_datagrams() == before
    client.disconnect()
    assert lab.whoami(client.host)["ip"] == client_public(lab)


def test_auto_prefers_direct_when_reachable(direct: System) -> None:
    client = direct.client()
    answer = client.connect()
    assert answer["mode"] == "direct"
    assert direct.lab.whoami(client.host)["ip"] == home_public(direct.lab)


def test_export_gives_a_standard_config_and_qr(direct: System) -> None:
    client = direct.client()
    text = client.vpn("export").stdout
    assert "[Interface]" in text
    assert "[Peer]" in text
    assert f"Endpoint = {home_public(direct.lab)}:51820" in text
    assert "DNS = 10." in text
    png = client.state_dir / "wg.png"
    client.vpn("export", "--qr-png", str(png))
    assert png.read_bytes().startswith(b"\x89PNG")
    assert (png.stat().st_mode & 0o777) == 0o600
    qr = client.vpn("export", "--qr").stdout
    assert "█" in qr


def test_exported_config_works_with_stock_wireguard(direct: System) -> None:
    """What the official apps do with the export: plain WireGuard, no higgsvpn involved."""
    lab = direct.lab
    client = direct.client()
    text = client.vpn("export").stdout
    fields = export_fields(text)
    ifname = lab.ifname("stk")
    start_wireguard_go(client.host, ifname)
    try:
        client.host.run(["wg", "setconf", ifname, "/dev/stdin"], input=wg_setconf_text(text))
        client.host.run(["ip", "address", "add", fields["Address"], "dev", ifname])
        client.host.run(["ip", "link", "set", ifname, "mtu", fields["MTU"], "up"])
        # Only the internet host through the tunnel: the endpoint stays on the normal route.
        client.host.run(["ip", "route", "add", f"{lab.internet.ip}/32", "dev", ifname])
        wait_until(
            "the stock tunnel to carry traffic",
            lambda: lab.whoami(client.host, timeout=4)["ip"] == home_public(lab),
            30,
            every=1.0,
        )
    finally:
        client.host.run(["ip", "link", "delete", ifname], check=False)


def test_a_node_restarted_after_a_crash_initiates_to_its_direct_client(direct: System) -> None:
    """Issue 13 item 5. SIGKILLed and started again on its state directory, the node reads its
    direct peer's endpoint off the crashed run's interface before removing it and, once the
    server's sync gives the peer back, initiates to it there: the client is served again
    without having to notice first. Runs last here: it kills the node."""
    lab = direct.lab
    client = direct.client()
    client.connect("--mode", "direct")
    check_tunnel(direct, client)
    session = client.status()["session_id"]
    node = direct.node
    assert node.proc is not None
    node.proc.popen.kill()
    node.proc.popen.wait(10)
    flags = ["--server", direct.server.url, "--listen-port", str(NODE_PORT)]
    flags += ["--country", "DE", "--region", "Lab", "--dns-upstream", lab.internet.ip]
    if node.endpoint:
        flags += ["--endpoint", node.endpoint]
    started = time.monotonic()
    node.program.start(*flags, *node.args, env=node.env)  # its identity: no enrollment key

    def answered() -> bool:
        echo = ["ping", "-c", "1", "-W", "1", lab.internet.ip]
        return client.host.run(echo, check=False, timeout=5).returncode == 0

    def log() -> str:
        assert node.proc is not None
        return node.proc.log_text()

    # The killed node's wireguard-go answers until the restarted node's recovery removes it:
    # the echoes that count are those after the new interface has its peers.
    wait_until("the restarted node to have its peers", lambda: "peers synced" in log(), 60)
    wait_until("the tunnel to carry traffic again", answered, 30, every=0.2)
    took = time.monotonic() - started
    kept = "the same" if client.status()["session_id"] == session else "a new"
    print(f"served again {took:.2f}s after the restart command, on {kept} session")
    # The peer set at the client's public address (as the home router forwards it) with a
    # keepalive: WireGuard initiated to it.
    assert re.search(
        rf"wg set \S+ peer \S+ allowed-ips \S+ endpoint {re.escape(client_public(lab))}:\d+ "
        r"persistent-keepalive 25",
        log(),
    ), log()[-3000:]
    assert lab.whoami(client.host)["ip"] == home_public(lab)
