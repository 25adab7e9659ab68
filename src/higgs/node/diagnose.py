"""`higgsnode diagnose`: read-only checks, each failure with the command that fixes it.

Nothing here changes the host; reads go through osnet (netlink, sysctl, the command funnel for
``nft list`` / ``iptables-save``).
"""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from higgs.node.agent import check_privileges
from higgs.node.host import NodeHost
from higgs.node.mtu import decide_mtu, fits_uplink
from higgs.node.runstate import read_status
from higgs.node.settings import NodeSettings
from higgs.osnet import netlink, sysctl

__all__ = ["CheckResult", "run_checks"]

CLOCK_SKEW_MAX_S = 120.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    # Passing, but something the owner may want to fix (e.g. no port mapping: clients are
    # relayed, which works, but direct mode does not). Does not change the exit status.
    warn: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _link(name: str) -> dict[str, Any] | None:
    def get(ipr: Any) -> dict[str, Any] | None:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        link = ipr.get_links(idx[0])[0]
        addrs = [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx[0])
        ]
        return {
            "mtu": int(link.get_attr("IFLA_MTU")),
            "up": bool(link["flags"] & 1),
            "addresses": addrs,
            "index": idx[0],
        }

    return netlink.call(get)


def _route_dev(dst: str) -> str | None:
    def get(ipr: Any) -> str | None:
        routes = ipr.route("get", dst=dst)
        if not routes:
            return None
        oif = routes[0].get_attr("RTA_OIF")
        links = ipr.get_links(oif)
        return str(links[0].get_attr("IFLA_IFNAME")) if links else None

    try:
        return netlink.call(get)
    except Exception:
        return None


def run_checks(settings: NodeSettings, *, running: bool) -> list[CheckResult]:
    results: list[CheckResult] = []
    iface = settings.interface

    def check(name: str, fn: Callable[[], CheckResult]) -> None:
        try:
            results.append(fn())
        except Exception as exc:
            results.append(CheckResult(name, False, f"check failed: {exc}"))

    def privileges() -> CheckResult:
        try:
            check_privileges()
        except Exception:
            return CheckResult(
                "privileges", False, "not root / no CAP_NET_ADMIN", "sudo higgsnode diagnose"
            )
        return CheckResult("privileges", True, "root or CAP_NET_ADMIN")

    def agent() -> CheckResult:
        if running:
            return CheckResult("agent", True, "higgsnode is running")
        return CheckResult(
            "agent",
            False,
            "higgsnode is not running",
            "systemctl start higgsnode   (or: higgsnode start --server URL …)",
        )

    def forwarding() -> CheckResult:
        value = sysctl.read("net.ipv4.ip_forward")
        if value == "1":
            return CheckResult("forwarding", True, "net.ipv4.ip_forward = 1")
        return CheckResult(
            "forwarding", False, f"net.ipv4.ip_forward = {value}", "sysctl -w net.ipv4.ip_forward=1"
        )

    host = NodeHost(settings)
    uplink_name: list[str] = []

    def uplink() -> CheckResult:
        try:
            up = host.uplink()
        except Exception as exc:
            return CheckResult(
                "uplink",
                False,
                f"no default route: {exc}",
                "ip route add default via <gateway> dev <interface>",
            )
        uplink_name.append(up.name)
        return CheckResult("uplink", True, f"default route via {up.name} (mtu {up.mtu})")

    def interface() -> CheckResult:
        link = _link(iface)
        want = str(settings.node_address)
        if link is None:
            return CheckResult(
                "interface", False, f"{iface} does not exist", "systemctl restart higgsnode"
            )
        if want not in link["addresses"] or not link["up"]:
            return CheckResult(
                "interface",
                False,
                f"{iface} up={link['up']} addresses={link['addresses']}",
                f"ip address add {want} dev {iface}; ip link set {iface} up",
            )
        return CheckResult("interface", True, f"{iface} up with {want}")

    def routes() -> CheckResult:
        probe = str(next(iter(settings.tunnel_subnet.hosts())) + 1)
        dev = _route_dev(probe)
        if dev != iface:
            return CheckResult(
                "routes",
                False,
                f"{settings.tunnel_subnet} is routed via {dev}, not {iface}",
                f"ip route replace {settings.tunnel_subnet} dev {iface}",
            )
        return CheckResult("routes", True, f"{settings.tunnel_subnet} via {iface}")

    def mtu() -> CheckResult:
        link = _link(iface)
        if link is None or not uplink_name:
            return CheckResult("mtu", False, "interface or uplink missing", "see above")
        up = _link(uplink_name[0])
        assert up is not None
        auto = decide_mtu(settings.model_copy(update={"mtu": None}), up["mtu"])
        # At the 1280 floor the node accepts fragmented outer packets on purpose (osnet.mtu).
        if link["mtu"] > auto.mtu and not fits_uplink(settings, link["mtu"], up["mtu"]):
            return CheckResult(
                "mtu",
                False,
                f"{iface} mtu {link['mtu']} does not fit uplink mtu {up['mtu']} "
                f"({auto.limited_by} headers); automatic: {auto.reason}",
                f"ip link set dev {iface} mtu {auto.mtu}   (and leave `mtu` unset in the config)",
            )
        return CheckResult(
            "mtu", True, f"{iface} mtu {link['mtu']} (uplink {up['mtu']}; automatic {auto.mtu})"
        )

    def nat() -> CheckResult:
        if not uplink_name:
            return CheckResult("nat", False, "no uplink to check against", "see above")
        up = uplink_name[0]
        status = host.firewall_status()
        subnet = settings.tunnel_subnet
        fix = "systemctl restart higgsnode   (the node re-applies its rules on start)"
        if status is None:
            return CheckResult("nat", False, "no firewall rules of the node present", fix)
        if status.masquerades_on(up):
            return CheckResult("nat", True, f"masquerade of {subnet} on {up} ({status.backend})")
        on = ", ".join(oif for _, oif in status.masquerade) or "nothing"
        return CheckResult(
            "nat", False, f"masquerade on {on}, not on the uplink {up} ({status.backend})", fix
        )

    def dns() -> CheckResult:
        if not settings.dns.enabled:
            return CheckResult("dns", True, "forwarder disabled in the config")
        addr = (str(settings.node_address.ip), settings.dns.port)
        try:
            with socket.create_connection(addr, timeout=2):
                pass
        except OSError as exc:
            return CheckResult(
                "dns",
                False,
                f"no forwarder on {addr[0]}:{addr[1]}: {exc}",
                "systemctl restart higgsnode",
            )
        return CheckResult("dns", True, f"forwarder listening on {addr[0]}:{addr[1]}")

    def port_mapping() -> CheckResult:
        name = "port_mapping"
        if settings.port_mapping == "off":
            how = (
                f"endpoint {settings.endpoint}" if settings.endpoint else "no endpoint: relay only"
            )
            return CheckResult(name, True, f"off ({how})")
        status = read_status(settings.state_dir) if running else None
        pm = (status or {}).get("port_mapping") or {}
        port = settings.listen_port
        by_hand = (
            f"forward UDP port {port} to this PC on the router and start with "
            f"--endpoint PUBLIC_IP:{port} --port-mapping off"
        )
        if not pm:
            return CheckResult(
                name, True, "unknown (the agent is not running)", "see above", warn=True
            )
        if pm.get("state") == "mapped":
            where = f"{pm.get('external_endpoint')} by {pm.get('method')} on {pm.get('gateway')}"
            if pm.get("verified") is False:
                return CheckResult(
                    name,
                    True,
                    f"{where}, but the server's probe did not arrive (relay only)",
                    by_hand,
                    warn=True,
                )
            state = "verified by the server" if pm.get("verified") else "verification pending"
            return CheckResult(name, True, f"{where}, {state}")
        tried = "; ".join(
            f"{a.get('method')}: {a.get('reason')} ({a.get('detail')})"
            for a in pm.get("attempts") or []
        )
        return CheckResult(
            name,
            True,
            f"no mapping, clients are relayed: {tried or 'still trying'}",
            "enable UPnP-IGD or NAT-PMP/PCP on the home router, or " + by_hand,
            warn=True,
        )

    server_date: list[float] = []

    def server() -> CheckResult:
        if not settings.server:
            return CheckResult(
                "server", False, "no server configured", "higgsnode start --server URL"
            )
        url = f"{settings.server}/healthz"
        try:
            response = httpx.get(url, timeout=5, trust_env=False)
        except httpx.HTTPError as exc:
            return CheckResult(
                "server",
                False,
                f"{url}: {type(exc).__name__}: {exc}",
                f"curl -v {url}   (check DNS, routing and firewalls towards the server)",
            )
        date = response.headers.get("date")
        if date:
            server_date.append(email.utils.parsedate_to_datetime(date).timestamp())
        if response.status_code != 200:
            return CheckResult(
                "server", False, f"{url}: HTTP {response.status_code}", f"curl -v {url}"
            )
        return CheckResult("server", True, f"{url} answers")

    def clock() -> CheckResult:
        now = time.time()
        if server_date:
            skew = now - server_date[0]
            if abs(skew) > CLOCK_SKEW_MAX_S:
                return CheckResult(
                    "clock",
                    False,
                    f"local clock is {skew:+.0f}s off the server's",
                    "timedatectl set-ntp true",
                )
            return CheckResult("clock", True, f"within {abs(skew):.0f}s of the server")
        if time.gmtime(now).tm_year < 2025:
            return CheckResult(
                "clock",
                False,
                time.strftime("%Y-%m-%d", time.gmtime(now)),
                "timedatectl set-ntp true",
            )
        return CheckResult("clock", True, "plausible (server date not available)")

    check("privileges", privileges)
    check("agent", agent)
    check("forwarding", forwarding)
    check("uplink", uplink)
    check("interface", interface)
    check("routes", routes)
    check("mtu", mtu)
    check("nat", nat)
    check("dns", dns)
    check("port_mapping", port_mapping)
    check("server", server)
    check("clock", clock)
    return results
