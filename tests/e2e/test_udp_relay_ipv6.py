"""The UDP relay on an IPv6 address in the lab's IPv6 topology (issue 11): the node behind its
home router (no port forward), the client on its own LAN, both legs IPv6 (the sites' global
prefixes), the relay address the server's IPv6 one. The tunnel inside stays IPv4."""

from __future__ import annotations

from higgs.lab.plan import default_plan, ipv6_plan
from tests.e2e.client_system import System, check_tunnel, home_public, wait_until
from tests.e2e.conftest import PRODUCT_MARKS, system_fixtures, udp_relay_status

pytestmark = PRODUCT_MARKS

_V6 = ipv6_plan(default_plan())
RELAY_IP6 = str(_V6["server"].address().ip)
CLIENT_IP6 = str(_V6["client"].address().ip)
NODE_IP6 = str(_V6["node"].address().ip)


_ENV = {"BOSON_UDP_RELAY_ADDRESS": RELAY_IP6, "BOSON_UDP_RELAY_PORTS": "40000-40009"}
v6_system, v6 = system_fixtures("v6", direct=False, ipv6=True, server_env=_ENV)


def test_both_legs_and_the_relay_address_in_ipv6(v6: System) -> None:
    client = v6.client()
    answer = client.connect()
    assert answer["mode"] == "udp_relay"
    check_tunnel(v6, client)  # whoami sees the home router (IPv4 inside), DNS via the node
    relay = udp_relay_status(v6)
    assert relay["relay_ip"] == RELAY_IP6
    assert relay["mode"] == "userspace"  # the kernel path is IPv4 only
    wait_until("both legs bound", lambda: any(v["client"] and v["node"]
               for v in udp_relay_status(v6)["legs"].values()), 20)  # fmt: skip
    (legs,) = [v for v in udp_relay_status(v6)["legs"].values() if v["client"]]
    assert legs["client"].startswith(f"[{CLIENT_IP6}]:")
    assert legs["node"].startswith(f"[{NODE_IP6}]:")
    assert v6.lab.whoami(client.host)["ip"] == home_public(v6.lab)
    client.disconnect()
