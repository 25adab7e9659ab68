"""A real home router in the lab: Debian's miniupnpd (nftables backend) on a NAT router.

    with Lab() as lab:
        router = MiniUpnpd(lab, upnp=True, natpmp=True).start()   # on home_router
        ...
        assert router.mappings() == []

miniupnpd runs only inside the router's namespace (``ip netns exec``, never in the root
namespace), with its own config, PID and lease files in the lab's run directory and its own
nft table (``hl_upnp``, inet) in that namespace: ext_ifname is the router's WAN, it listens on
the LAN (with ``ipv6=True`` also on the LAN's IPv6 address, for pinholes), ``secure_mode`` is
on (a LAN host can only map ports to itself). Its WAN address is in a documentation range,
which miniupnpd refuses as "reserved" unless it learns it by STUN, so a STUN responder
(``higgs.lab.services.stun``) runs on the lab's internet host — never a STUN server outside
the lab. ``enable_natpmp`` switches NAT-PMP and PCP together (one switch in miniupnpd). The
lab stops it by PID like every lab process, and deleting the namespace takes its nft table;
:meth:`MiniUpnpd.mappings` is what a test checks for leftovers.

The "none" variant (carrier-grade NAT: no mapping protocol at all) is a router without it.
"""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import LabError
from .lab import Lab
from .procs import LabProcess

__all__ = [
    "HTTP_PORT",
    "STUN_PORT",
    "TABLE",
    "MiniUpnpd",
    "RouterMapping",
    "parse_mappings",
    "render_config",
    "render_table",
]

TABLE = "hl_upnp"
HTTP_PORT = 5000
STUN_PORT = 3478
NATPMP_PORT = 5351
MINIUPNPD = "/usr/sbin/miniupnpd"
FORWARDING_ON = "Port forwarding is now enabled"


def render_config(
    *,
    wan_if: str,
    lan_if: str,
    lan_net: str,
    stun_host: str,
    lease_file: Path,
    upnp: bool,
    natpmp: bool,
    uid: str,
    lan_ip6: str | None = None,
) -> str:
    """miniupnpd.conf for a lab router (pure); ``lan_ip6`` given: also serve IPv6 on the
    LAN (PCP pinholes, UPnP's WANIPv6FirewallControl), on the LAN interface's own addresses.

    No ``ipv6_listening_ip``: with it miniupnpd 2.3.1 binds its one HTTP socket to that IPv6
    address alone (``ss``: ``[2001:db8:1::1]%lan0:5000``), so UPnP over IPv4 is refused;
    without it the socket is dual-stack on the LAN (``*%lan0:5000``)."""
    yes = {True: "yes", False: "no"}
    v6 = [f"ext_ifname6={wan_if}"] if lan_ip6 else []
    return "\n".join(
        [
            *v6,
            f"ext_ifname={wan_if}",
            f"listening_ip={lan_if}",
            f"http_port={HTTP_PORT}",
            f"enable_upnp={yes[upnp]}",
            f"enable_natpmp={yes[natpmp]}",
            "secure_mode=yes",
            "ext_perform_stun=yes",
            f"ext_stun_host={stun_host}",
            f"ext_stun_port={STUN_PORT}",
            f"upnp_table_name={TABLE}",
            f"upnp_nat_table_name={TABLE}",
            "upnp_forward_chain=upnp_forward",
            "upnp_nat_chain=upnp_prerouting",
            "upnp_nat_postrouting_chain=upnp_postrouting",
            f"lease_file={lease_file}",
            f"uuid={uid}",
            "system_uptime=no",
            "notify_interval=60",
            "clean_ruleset_interval=600",
            "min_lifetime=120",
            "max_lifetime=86400",
            f"allow 1024-65535 {lan_net} 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
            "",
        ]
    )


def render_table() -> str:
    """The table and chains miniupnpd fills (the package's nft_init.sh calls a helper it does
    not ship); the forward chain accepts, so the router forwards as before."""
    return (
        f"table inet {TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        "    jump upnp_forward\n"
        "  }\n"
        "  chain upnp_forward {\n"
        "  }\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority -100; policy accept;\n"
        "    jump upnp_prerouting\n"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority 100; policy accept;\n"
        "    jump upnp_postrouting\n"
        "  }\n"
        "  chain upnp_prerouting {\n"
        "  }\n"
        "  chain upnp_postrouting {\n"
        "  }\n"
        "}\n"
    )


@dataclass(frozen=True)
class RouterMapping:
    """One DNAT rule miniupnpd installed: ``proto external_port`` → ``to_addr:to_port``."""

    proto: str
    external_port: int
    to_addr: str
    to_port: int


# miniupnpd writes raw matches: ``@nh,72,8 0x11`` is the IPv4 protocol byte (0x11 UDP, 0x6 TCP).
_DNAT_RE = re.compile(
    r"@nh,72,8 (?P<proto>0x11|0x6) th dport (?P<port>\d+) dnat ip to (?P<addr>[\d.]+):(?P<to>\d+)"
)
_PROTO = {"0x11": "udp", "0x6": "tcp"}


def parse_mappings(ruleset: str) -> list[RouterMapping]:
    """The port mappings in ``nft list chain inet hl_upnp upnp_prerouting`` output."""
    return [
        RouterMapping(_PROTO[m["proto"]], int(m["port"]), m["addr"], int(m["to"]))
        for m in _DNAT_RE.finditer(ruleset)
    ]


class MiniUpnpd:
    """miniupnpd on ``router`` (``home_router`` or ``client_router``) of a built lab."""

    def __init__(
        self,
        lab: Lab,
        *,
        router: str = "home_router",
        upnp: bool = True,
        natpmp: bool = True,
        ipv6: bool = False,
    ) -> None:
        if lab.workdir is None:
            raise LabError("build the lab first")
        if not upnp and not natpmp:
            raise LabError("a router with neither UPnP nor NAT-PMP/PCP is a plain NAT router")
        self.lab = lab
        self.router = lab.host(router)
        if self.router.plan.wan_if is None or self.router.plan.lan_net is None:
            raise LabError(f"{router} is not a NAT router")
        self.upnp = upnp
        self.natpmp = natpmp
        if ipv6 and self.router.v6 is None:
            raise LabError("ipv6=True needs a Lab(ipv6=True)")
        self.ipv6 = ipv6
        self.dir = lab.workdir / f"miniupnpd-{router}"
        self.proc: LabProcess | None = None
        self.stun: LabProcess | None = None

    @property
    def lan_if(self) -> str:
        wan = self.router.plan.wan_if
        return next(name for name, _ in self.router.plan.addresses if name != wan)

    def start(self, *, timeout: float = 20.0) -> MiniUpnpd:
        import sys

        self.dir.mkdir(mode=0o700, exist_ok=True)
        inet = self.lab.internet
        self.stun = inet.popen(
            [sys.executable, "-m", "higgs.lab.services.stun", "--host", inet.ip,
             "--port", str(STUN_PORT)],
            name="stun",
        )  # fmt: skip
        self.stun.wait_listening(STUN_PORT, proto="udp", timeout=timeout)
        plan = self.router.plan
        assert plan.wan_if is not None
        assert plan.lan_net is not None
        conf = self.dir / "miniupnpd.conf"
        conf.write_text(
            render_config(
                wan_if=plan.wan_if,
                lan_if=self.lan_if,
                lan_net=plan.lan_net,
                stun_host=inet.ip,
                lease_file=self.dir / "leases",
                upnp=self.upnp,
                natpmp=self.natpmp,
                uid=str(uuid.uuid4()),
                lan_ip6=self.router.addr6(self.lan_if) if self.ipv6 else None,
            )
        )
        self.router.nft(render_table())
        # -d: foreground, logs to stderr (the lab's log file); -P: PID file in the run dir
        # (the default is /var/run/miniupnpd.pid, shared with the root namespace).
        argv = [MINIUPNPD, "-d", "-f", str(conf), "-P", str(self.dir / "miniupnpd.pid")]
        self.proc = self.router.popen([*argv] if self.ipv6 else [*argv, "-4"], name="miniupnpd")
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        if self.upnp:
            # With IPv6 its HTTP socket is one dual-stack IPv6 socket (/proc/net/tcp6).
            self.proc.wait_listening(
                HTTP_PORT, proto="tcp6" if self.ipv6 else "tcp", timeout=timeout
            )
        if self.natpmp:
            self.proc.wait_listening(NATPMP_PORT, proto="udp", timeout=timeout)
        # STUN runs before the listeners open; forwarding stays off if STUN saw a NAT.
        deadline = time.monotonic() + timeout
        while (log := self.proc.log_text()).find(FORWARDING_ON) < 0:
            if time.monotonic() > deadline or not self.proc.alive():
                raise LabError(f"miniupnpd will not forward ports:\n{log[-2000:]}")
            time.sleep(0.1)

    def pinholes(self) -> list[str]:
        """The IPv6 pinholes the router holds now: the addresses its forward rules open to
        (miniupnpd writes them as ``@nh,192,128 0x<address in hex>``)."""
        out = self.router.run(["nft", "list", "chain", "inet", TABLE, "upnp_forward"]).stdout
        return [
            str(ipaddress.IPv6Address(int(h, 16)))
            for h in re.findall(r"@nh,192,128 0x([0-9a-f]{32})", out)
        ]

    def mappings(self) -> list[RouterMapping]:
        """The port mappings the router holds now (its nft DNAT rules)."""
        out = self.router.run(["nft", "list", "chain", "inet", TABLE, "upnp_prerouting"]).stdout
        return parse_mappings(out)

    def leases(self) -> str:
        """miniupnpd's lease file (what it would restore after a restart)."""
        path = self.dir / "leases"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        for proc in (self.proc, self.stun):
            if proc is not None:
                proc.stop()
        self.router.run(["nft", "delete", "table", "inet", TABLE], check=False)
