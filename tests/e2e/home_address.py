"""The home router's public address changes mid-session (issue 17 item 3, issue 18 item 2),
and a lab with miniupnpd on the home router for the device tests that need it.

The change adds a second address on the router's WAN and SNATs the LAN to it (the old one
stays on the link, so the lab's routes do not move); ``old_address_gone`` also drops what
arrives for the old address, as if it belonged to somebody else now. ``restore`` undoes all
of it, and is safe to call twice: the lab is shared by a module and by a rerun.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from higgs.lab.lab import Lab
from higgs.lab.miniupnpd import MiniUpnpd
from higgs.lab.plan import default_plan
from higgs.lab.render import NAT_TABLE
from tests.e2e.client_system import System, running_system

__all__ = [
    "NEW_HOME_PUBLIC",
    "RELAY_IP",
    "add_address",
    "change_home_address",
    "old_address_gone",
    "restore_home_address",
    "system_with_miniupnpd",
]

NEW_HOME_PUBLIC = "203.0.113.11"  # the home router's address after the change
RELAY_IP = str(default_plan().host("server").address().ip)
GONE_TABLE = "higgs_test_gone"  # on the home router: the old public address answers nothing


def add_address(lab: Lab) -> None:
    lab.home_router.run(["ip", "addr", "add", f"{NEW_HOME_PUBLIC}/28", "dev", "wan0"])


def snat_to_new_address(lab: Lab) -> None:
    lab.home_router.run(["nft", "insert", "rule", "ip", NAT_TABLE, "postrouting", "oifname",
                         "wan0", "ip", "saddr", "192.168.1.0/24", "snat", "to",
                         NEW_HOME_PUBLIC])  # fmt: skip
    lab.home_router.run(["conntrack", "-F"], check=False)


def change_home_address(lab: Lab) -> None:
    add_address(lab)
    snat_to_new_address(lab)


def old_address_gone(lab: Lab, old: str) -> None:
    rules = (
        f"table ip {GONE_TABLE} {{\n"
        "  chain pre {\n"
        "    type filter hook prerouting priority raw;\n"
        f'    iifname "wan0" ip daddr {old} drop\n'
        "  }\n"
        "}\n"
    )
    lab.home_router.run(["nft", "-f", "-"], input=rules)


def restore_home_address(lab: Lab) -> None:
    router = lab.home_router
    router.run(["nft", "delete", "table", "ip", GONE_TABLE], check=False)
    rules = router.run(["nft", "-a", "list", "chain", "ip", NAT_TABLE, "postrouting"]).stdout
    for line in rules.splitlines():
        if f"snat to {NEW_HOME_PUBLIC}" in line and "# handle " in line:
            handle = line.rsplit("# handle ", 1)[1].strip()
            router.run(["nft", "delete", "rule", "ip", NAT_TABLE, "postrouting", "handle", handle])
    router.run(["ip", "addr", "del", f"{NEW_HOME_PUBLIC}/28", "dev", "wan0"], check=False)
    router.run(["conntrack", "-F"], check=False)


@contextmanager
def system_with_miniupnpd(tmp: Path, server_env: dict[str, str]) -> Iterator[System]:
    """A node behind a home router running miniupnpd (UPnP and NAT-PMP/PCP) and no manual
    forward, the server's UDP relay on, fast sweeps and heartbeats plus ``server_env``."""
    routers: list[MiniUpnpd] = []

    def with_miniupnpd(lab: Lab) -> None:
        routers.append(MiniUpnpd(lab, upnp=True, natpmp=True).start())

    env = {
        "BOSON_UDP_RELAY_ADDRESS": RELAY_IP,
        "BOSON_UDP_RELAY_PORTS": "40000-40099",
        "BOSON_SWEEP_INTERVAL_S": "1",
        "BOSON_HEARTBEAT_INTERVAL_S": "2",
        "BOSON_MISSED_HEARTBEATS": "5",
        **server_env,
    }
    with running_system(tmp, direct=False, server_env=env, before_start=with_miniupnpd) as s:
        s.miniupnpd = routers[0]  # type: ignore[attr-defined]
        try:
            yield s
        finally:
            for router in routers:
                router.stop()
