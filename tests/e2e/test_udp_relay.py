"""The UDP relay in the product lab (issue 11): the node sits behind its NAT home router with
no port forward, so the relay is its only UDP path.

One lab per forwarding mode (module fixture, ``kernel`` then ``userspace``); in each:
higgsvpn through the UDP relay (whoami sees the home router, DNS goes via the node, status
and ``bosonserver sessions`` name the path), the client's public address changing mid-session
(traffic resumes within 20 s), and a stock wireguard-go client configured only from
``higgsvpn export``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from higgs.lab import Host, Lab
from higgs.lab.plan import default_plan
from higgs.lab.procs import stop_processes
from higgs.lab.render import NAT_TABLE
from higgs.lab.stock import full_tunnel_client
from higgs.lab.wireguard import KeyPair
from tests.e2e.client_system import (
    DNS_NAME,
    System,
    check_tunnel,
    client_public,
    disconnect_all,
    home_public,
    needs_node,
    running_system,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root, needs_node]

RELAY_IP = str(default_plan().host("server").address().ip)
NEW_CLIENT_PUBLIC = "203.0.113.21"


@pytest.fixture(scope="module", params=["kernel", "userspace"])
def udp_system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    env = {"BOSON_UDP_RELAY_ADDRESS": RELAY_IP, "BOSON_UDP_RELAY_PORTS": "40000-40099"}
    if request.param == "userspace":
        env["BOSON_UDP_RELAY_USERSPACE"] = "true"
    tmp = tmp_path_factory.mktemp(f"udp-{request.param}")
    with running_system(tmp, direct=False, server_env=env) as system:
        system.mode = request.param  # type: ignore[attr-defined]
        yield system


@pytest.fixture
def udp(udp_system: System) -> Iterator[System]:
    yield udp_system
    disconnect_all(udp_system)


def relay_status(system: System) -> dict[str, Any]:
    path = system.server.data_dir / "relay" / "relay-status.json"
    return dict(json.loads(path.read_text()))


def sessions(system: System) -> list[dict[str, Any]]:
    listing = json.loads(system.server.cli("sessions", "--json", "--state", "open"))
    return list(listing["sessions"] if isinstance(listing, dict) else listing)


def test_higgsvpn_through_the_udp_relay_and_a_roaming_client(udp: System) -> None:
    lab = udp.lab
    mode = udp.mode  # type: ignore[attr-defined]
    client = udp.client()
    answer = client.connect()
    assert answer["mode"] == "udp_relay"
    check_tunnel(udp, client)
    status = client.status()
    assert status["mode"] == "udp_relay"
    assert "no verified endpoint" in status["path_why"]
    assert udp.server.relayed_datagrams() == 0  # nothing over the WebSocket relay

    relay = relay_status(udp)
    assert relay["mode"] == mode
    (legs,) = [v for v in relay["legs"].values() if v["client"]]
    assert legs["client"].startswith(client_public(lab) + ":")
    assert legs["node"].startswith(home_public(lab) + ":")
    if mode == "kernel":
        wait_until("the kernel forwarding", lambda: relay_status(udp)["kernel_packets"] > 0, 10)
    (row,) = [s for s in sessions(udp) if s["session_id"] == status["session_id"]]
    assert row["path"] == "udp_relay"
    assert 40000 <= row["relay_port"] <= 40099
    assert row["client_seen"] == legs["client"]

    # --- the client's public address changes mid-session ------------------------------------
    router = lab.client_router
    router.run(["ip", "addr", "add", f"{NEW_CLIENT_PUBLIC}/28", "dev", "wan0"])
    router.run(["nft", "insert", "rule", "ip", NAT_TABLE, "postrouting", "oifname", "wan0",
                "ip", "saddr", "10.0.2.0/24", "snat", "to", NEW_CLIENT_PUBLIC])  # fmt: skip
    router.run(["conntrack", "-F"], check=False)
    moved = time.monotonic()
    assert lab.whoami(router)["ip"] != NEW_CLIENT_PUBLIC  # the router itself: unchanged

    def through() -> bool:
        return pings(client.host, lab) and relay_status(udp)["rebinds"] >= 1

    wait_until("traffic after the client's address changed", through, 20, every=0.3)
    assert time.monotonic() - moved <= 20
    assert lab.whoami(client.host)["ip"] == home_public(lab)
    (legs,) = [v for v in relay_status(udp)["legs"].values() if v["client"]]
    assert legs["client"].startswith(NEW_CLIENT_PUBLIC + ":")
    client.disconnect()


def pings(host: Host, lab: Lab) -> bool:
    out = host.run(["ping", "-c", "1", "-W", "1", lab.internet.ip], check=False)
    return out.returncode == 0


def _parse_wg_quick(text: str) -> dict[str, str]:
    return {
        m.group(1).lower(): m.group(2).strip()
        for m in re.finditer(r"^(\w+)\s*=\s*(.+)$", text, re.MULTILINE)
    }


def test_a_stock_client_configured_only_from_higgsvpn_export(udp: System, tmp_path: Path) -> None:
    lab = udp.lab
    client = udp.client()
    exported = client.vpn("export").stdout
    cfg = _parse_wg_quick(exported)
    assert cfg["endpoint"].startswith(RELAY_IP + ":")  # the UDP relay: the node has no endpoint
    own = KeyPair(private=cfg["privatekey"], public="")
    proc = full_tunnel_client(
        client.host,
        lab.ifname("xs"),
        own,
        peer_public=cfg["publickey"],
        endpoint=cfg["endpoint"],
        address=cfg["address"].split(",")[0].strip(),
        mtu=int(cfg.get("mtu", "1380")),
        fwmark=51821,
    )
    try:
        wait_until("a handshake through the UDP relay", lambda: pings(client.host, lab), 30)
        assert lab.whoami(client.host)["ip"] == home_public(lab)
        dns = cfg["dns"].split(",")[0].strip()
        assert lab.resolve(client.host, DNS_NAME, server=dns), "no answer from the node's DNS"
        asked = {q.source.split("#")[0] for q in lab.wait_dns_queries(DNS_NAME, timeout=10)}
        assert home_public(lab) in asked
    finally:
        stop_processes([proc])
        client.host.run(
            ["ip", "-force", "-batch", "-"],
            input="rule del not fwmark 51821 table 51821\n"
            "rule del table main suppress_prefixlength 0\nroute flush table 51821\n",
            check=False,
        )
