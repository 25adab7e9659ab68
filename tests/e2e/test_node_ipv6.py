"""IPv6 through the tunnel with NAT66 (issue 6 item 5), with the real programs in the lab.

``Lab(ipv6=True)``: the node's home LAN has a global (routed) prefix 2001:db8:1::/64, the node
is 2001:db8:1::10 on it, the internet host 2001:db8:0:2::10. The node sees internet IPv6 on its
uplink, so it gives its tunnel a ULA prefix and masquerades clients' IPv6 behind its uplink
address: the internet host must see 2001:db8:1::10, never the client's own 2001:db8:2::10.
The owner's IPv6 LAN (the printer 2001:db8:1::20, the router 2001:db8:1::1, the node itself)
stays out of reach. One lab for the module; the last test stops the node and compares its host.
"""

from __future__ import annotations

import json

from higgs.lab import Lab, start_wireguard_go
from higgs.lab.lab import WHOAMI_PORT
from higgs.osnet import hoststate
from tests.e2e.client_system import DNS_NAME, Client, System, client_public, home_public, wait_until
from tests.e2e.conftest import PRODUCT_MARKS, export_fields, system_fixtures, wg_setconf_text

pytestmark = PRODUCT_MARKS

_BEFORE: dict[str, hoststate.HostState] = {}
_BEFORE_RA: dict[str, str] = {}


def _sysctl(lab: Lab, key: str) -> str:
    return str(lab.node.run(["sysctl", "-n", key]).stdout).strip()


def _snapshot_node(lab: Lab) -> None:
    """The node's host before higgsnode starts (accept_ra of the uplink is not in the
    snapshot's sysctl list: it names an interface)."""
    _BEFORE["node"] = hoststate.snapshot(netns=lab.node.ns)
    _BEFORE_RA["eth0"] = _sysctl(lab, "net.ipv6.conf.eth0.accept_ra")


v6_system, v6 = system_fixtures("v6", direct=True, ipv6=True, before_start=_snapshot_node)


def _pings6(client: Client, addr: str) -> bool:
    out = client.host.run(["ping", "-6", "-c", "1", "-W", "2", addr], check=False, timeout=15)
    return out.returncode == 0


def _check_ipv6_through_node(system: System, client: Client, answer: dict[str, object]) -> None:
    lab = system.lab
    addresses = str(answer["address"])
    assert ", fd" in addresses, f"no ULA IPv6 tunnel address offered: {addresses}"
    # IPv4 still goes through the node.
    assert lab.whoami(client.host)["ip"] == home_public(lab)
    # IPv6 too, NATed to the node's uplink address (not the client's own global one).
    assert lab.whoami(client.host, ipv6=True)["ip"] == lab.node.ip6
    assert _pings6(client, lab.internet.ip6)
    # The owner's IPv6 LAN is not reachable: printer, router, the node's own address.
    for addr in (lab.printer.ip6, lab.home_router.addr6("lan0"), lab.node.ip6):
        assert not _pings6(client, addr), f"{addr} of the owner's LAN answered a client"


def test_relay_client_gets_ipv6_through_nat66(v6: System) -> None:
    lab = v6.lab
    client = v6.client()
    own6 = lab.whoami(client.host, ipv6=True)["ip"]
    assert own6 == lab.client.ip6
    before = hoststate.snapshot(netns=client.host.ns)

    via_eth0 = ["ping", "-6", "-c", "1", "-W", "2", "-I", "eth0", lab.internet.ip6]
    assert client.host.run(via_eth0, check=False).returncode == 0

    answer = client.connect("--mode", "relay")
    assert answer["mode"] == "relay"
    _check_ipv6_through_node(v6, client, answer)
    # The kill switch still holds IPv6 outside the tunnel: forced out of eth0, it is refused.
    assert client.host.run(via_eth0, check=False).returncode != 0, "IPv6 left the tunnel"
    # The owner's printer is reachable over IPv6 from the node's host: the block is the node's.
    assert lab.node.run(["ping", "-6", "-c", "1", "-W", "2", lab.printer.ip6]).returncode == 0

    status = v6.node.program.cli("status", check=True).stdout
    assert "NAT66" in status, status

    client.disconnect()
    assert lab.whoami(client.host, ipv6=True)["ip"] == own6
    assert before.diff(hoststate.snapshot(netns=client.host.ns)) == ""


def test_direct_client_gets_ipv6_and_dns_over_ipv6_is_intercepted(v6: System) -> None:
    lab = v6.lab
    client = v6.client()
    answer = client.connect("--mode", "direct")
    assert answer["mode"] == "direct"
    _check_ipv6_through_node(v6, client, answer)
    # A query straight to the internet resolver's IPv6 address is answered by the node's
    # forwarder (DNAT on port 53), which asks upstream from the home router's address.
    assert lab.resolve(client.host, DNS_NAME, server=lab.internet.ip6)
    asked = {q.source.split("#")[0] for q in lab.wait_dns_queries(DNS_NAME, timeout=10)}
    assert home_public(lab) in asked
    assert client_public(lab) not in asked, asked
    assert lab.client.ip6 not in asked, asked


def test_exported_config_has_ipv6_and_works_with_stock_wireguard(v6: System) -> None:
    lab = v6.lab
    client = v6.client()
    text = client.vpn("export").stdout
    fields = export_fields(text)
    v4, v6addr = (a.strip() for a in fields["Address"].split(","))
    assert v4.startswith("10.")
    assert v6addr.startswith("fd")
    assert v6addr.endswith("/128")
    assert fields["AllowedIPs"] == "0.0.0.0/0, ::/0"
    assert len(fields["DNS"].split(",")) == 2
    # What a stock app does with it (no higgsvpn): IPv6 to the internet host leaves NATed.
    ifname = lab.ifname("stk6")
    start_wireguard_go(client.host, ifname)
    try:
        client.host.run(["wg", "setconf", ifname, "/dev/stdin"], input=wg_setconf_text(text))
        client.host.run(["ip", "address", "add", v4, "dev", ifname])
        client.host.run(["ip", "address", "add", v6addr, "dev", ifname, "nodad"])
        client.host.run(["ip", "link", "set", ifname, "mtu", fields["MTU"], "up"])
        client.host.run(["ip", "-6", "route", "add", f"{lab.internet.ip6}/128", "dev", ifname])
        wait_until(
            "the stock tunnel to carry IPv6",
            lambda: lab.whoami(client.host, ipv6=True, timeout=4)["ip"] == lab.node.ip6,
            30,
            every=1.0,
        )
    finally:
        client.host.run(["ip", "link", "delete", ifname], check=False)


def _node_metrics(system: System) -> dict[str, object]:
    listing = json.loads(system.server.cli("nodes", "--json"))
    items = listing["nodes"] if isinstance(listing, dict) else listing
    (node,) = [n for n in items if n["node_id"] == system.node.node_id]
    metrics: dict[str, object] = node.get("metrics") or {}
    return metrics


def test_uplink_losing_ipv6_makes_the_node_reject_it_until_it_is_back(v6: System) -> None:
    lab = v6.lab
    client = v6.client()
    client.connect("--mode", "relay")
    assert lab.whoami(client.host, ipv6=True)["ip"] == lab.node.ip6
    assert _node_metrics(v6).get("ipv6") is True
    url = f"http://[{lab.internet.ip6}]:{WHOAMI_PORT}/"
    gateway = str(lab.node.v6.gateway) if lab.node.v6 else ""
    lab.node.run(["ip", "-6", "route", "del", "::/0", "via", gateway])
    try:
        # Refused by the node with an ICMPv6 error: curl cannot connect (exit 7), rather
        # than waiting for its timeout (exit 28) as it would if the packets were dropped.
        def refused() -> bool:
            out = client.host.run(
                ["curl", "-6", "-sS", "--noproxy", "*", "--max-time", "8", url],
                check=False,
                timeout=20,
            )
            return out.returncode == 7

        wait_until("the node to reject IPv6", refused, 30, every=1.0)
        wait_until(
            "the heartbeat to report no IPv6",
            lambda: _node_metrics(v6).get("ipv6") is False,
            40,
            every=2.0,
        )
    finally:
        lab.node.run(["ip", "-6", "route", "add", "::/0", "via", gateway])
    wait_until(
        "NAT66 again",
        lambda: lab.whoami(client.host, ipv6=True, timeout=4)["ip"] == lab.node.ip6,
        30,
        every=1.0,
    )


def test_node_stop_restores_its_host(v6: System) -> None:
    lab = v6.lab
    assert _sysctl(lab, "net.ipv6.conf.all.forwarding") == "1"
    assert _BEFORE["node"].diff(hoststate.snapshot(netns=lab.node.ns)), "node changed nothing?"
    v6.node.stop()
    assert v6.node.proc is not None
    assert v6.node.proc.popen.returncode == 0, v6.node.proc.log.read_text()[-3000:]
    assert _BEFORE["node"].diff(hoststate.snapshot(netns=lab.node.ns)) == ""
    assert _sysctl(lab, "net.ipv6.conf.eth0.accept_ra") == _BEFORE_RA["eth0"]
