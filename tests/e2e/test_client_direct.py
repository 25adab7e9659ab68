"""higgsvpn in direct mode: the home router forwards the node's WireGuard port."""

from __future__ import annotations

from higgs.lab import start_wireguard_go
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
