"""The UDP relay in the product lab (issue 11): the node sits behind its NAT home router with
no port forward, so the relay is its only UDP path.

One lab per forwarding mode (module fixture, ``kernel`` then ``userspace``); in each:
higgsvpn through the UDP relay (whoami sees the home router, DNS goes via the node, status
and ``bosonserver sessions`` name the path), the client's public address changing mid-session
(traffic resumes within 20 s), a stock wireguard-go client configured only from
``higgsvpn export``, and a client whose network blocks UDP: it takes the WebSocket relay,
which the server bridges to the session's UDP relay port, so the node speaks only UDP.
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
    running_system,
    wait_until,
)
from tests.e2e.conftest import PRODUCT_MARKS, udp_relay_status

pytestmark = PRODUCT_MARKS

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
    # Requested by name, not through system_fixtures: a parametrized fixture must be a
    # declared dependency (request.getfixturevalue cannot parametrize).
    yield udp_system
    disconnect_all(udp_system)


def sessions(system: System) -> list[dict[str, Any]]:
    listing = json.loads(system.server.cli("sessions", "--json", "--state", "open"))
    return list(listing["sessions"] if isinstance(listing, dict) else listing)


def test_higgsvpn_through_the_udp_relay_and_a_roaming_client(udp: System) -> None:
    lab = udp.lab
    mode = udp.mode  # type: ignore[attr-defined]
    client = udp.client()
    # The server is the module's: a rerun of this test finds the first attempt's datagrams.
    relayed_before = udp.server.relayed_datagrams()
    answer = client.connect()
    assert answer["mode"] == "udp_relay"
    check_tunnel(udp, client)
    status = client.status()
    assert status["mode"] == "udp_relay"
    # Why not direct: no verified endpoint; once the hole punching that follows (issue 12)
    # gave up on the lab's NATs, the reason says that and that the session stays relayed.
    why = status["path_why"]
    assert "no verified endpoint" in why or ("hole punching" in why and "UDP relay" in why), why
    # Nothing over the WebSocket relay.
    assert udp.server.relayed_datagrams() == relayed_before

    relay = udp_relay_status(udp)
    assert relay["mode"] == mode
    (legs,) = [v for v in relay["legs"].values() if v["client"]]
    assert legs["client"].startswith(client_public(lab) + ":")
    assert legs["node"].startswith(home_public(lab) + ":")
    if mode == "kernel":
        wait_until("the kernel forwarding", lambda: udp_relay_status(udp)["kernel_packets"] > 0, 10)
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
        return pings(client.host, lab) and udp_relay_status(udp)["rebinds"] >= 1

    wait_until("traffic after the client's address changed", through, 20, every=0.3)
    assert time.monotonic() - moved <= 20
    assert lab.whoami(client.host)["ip"] == home_public(lab)
    (legs,) = [v for v in udp_relay_status(udp)["legs"].values() if v["client"]]
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


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == name or (want and head == f"{name}{{{want}}}"):
            total += float(value)
    return total


BLOCK_TABLE = "hgtest_block_udp"


def test_a_client_whose_network_blocks_udp_is_bridged_to_the_udp_relay(udp: System) -> None:
    lab = udp.lab
    client = udp.client()
    with client.write_config().open("a") as fh:
        fh.write("udp_relay_timeout_s = 3.0\n")  # the UDP relay cannot answer here: don't wait
    router = lab.client_router
    router.run(["nft", "-f", "-"], input=(
        f"table inet {BLOCK_TABLE} {{\n chain forward {{\n"
        "  type filter hook forward priority -50; policy accept;\n"
        '  oifname "wan0" udp dport != 53 counter drop\n }\n}\n'
    ))  # fmt: skip
    try:
        before = udp.server.metrics()
        answer = client.connect()
        assert answer["mode"] == "relay"
        status = client.status()
        assert status["mode"] == "relay"
        assert "UDP relay" in status["path_why"]
        check_tunnel(udp, client)  # whoami sees the home router, DNS goes via the node
        after = udp.server.metrics()

        def grew(name: str, **labels: str) -> float:
            return _metric(after, name, **labels) - _metric(before, name, **labels)

        up = grew("higgs_relay_bridge_datagrams_total", direction="to_udp")
        down = grew("higgs_relay_bridge_datagrams_total", direction="from_udp")
        assert up > 0, "nothing went to the UDP relay port"
        assert down > 0, "nothing came back from the UDP relay port"
        assert grew("higgs_relay_bridge_fallback_datagrams_total") == 0  # no node-link data
        # The relay bound the bridge as the client leg: the node's leg is its home router.
        (row,) = [s for s in sessions(udp) if s["session_id"] == status["session_id"]]
        legs = udp_relay_status(udp)["legs"][str(row["relay_port"])]
        assert legs["client"].startswith(RELAY_IP + ":")
        assert legs["node"].startswith(home_public(lab) + ":")
        blocked = router.run(["nft", "list", "table", "inet", BLOCK_TABLE]).stdout
        assert re.search(r"counter packets [1-9]", blocked), "the client's UDP was never blocked"
        client.disconnect()
    finally:
        router.run(["nft", "delete", "table", "inet", BLOCK_TABLE], check=False)


def _relay_leftovers(system: System, session_id: str) -> dict[str, str]:
    """What of the UDP relay is on the server host: our nft table, conntrack entries with our
    mark (what our NAT made) or toward the session's relay port, the session's lease if its
    session is still open. (Other tests' sessions stay open in this module's lab.)"""
    from higgs.osnet.relaynat import RelayNatNames

    server = system.lab.server
    names = RelayNatNames.for_instance("")
    left: dict[str, str] = {}
    tables = server.run(["nft", "list", "tables"]).stdout
    if names.table in tables:
        left["nft"] = tables
    db = system.server.data_dir / "bosonserver.db"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", session_id), session_id  # safe to quote below
    lease = f"select port from relay_leases where session_id = '{session_id}'"  # noqa: S608
    port = server.run(["sqlite3", str(db), lease]).stdout.strip()
    marked = server.run(["conntrack", "-L", "--mark", str(names.mark)], check=False).stdout
    toward = server.run(["conntrack", "-L", "-p", "udp", "--orig-dst", RELAY_IP], check=False)
    entries = [
        line for line in toward.stdout.splitlines() if port and f"dport={port} " in line
    ] + marked.strip().splitlines()
    if entries:
        left["conntrack"] = "\n".join(entries)
    query = f"select count(*) from sessions where state = 'open' and id = '{session_id}'"  # noqa: S608
    held = server.run(["sqlite3", str(db), query]).stdout.strip()
    if held != "0":
        left["leases"] = held
    return left


def test_the_server_and_its_relay_killed_mid_session_then_restarted(udp: System) -> None:
    """Runs last in the module: it restarts the server. SIGKILL of ``bosonserver serve`` kills
    the embedded relay with it; the next start undoes what it left and serves the still-open
    session again; traffic resumes without the user doing anything."""
    lab = udp.lab
    mode = udp.mode  # type: ignore[attr-defined]
    client = udp.client()
    with client.write_config().open("a") as fh:
        fh.write("udp_relay_timeout_s = 30.0\n")  # about restarts, not path timing: no hurry
    answer = client.connect()
    assert answer["mode"] == "udp_relay"
    session_id = str(client.status()["session_id"])
    wait_until("traffic through the UDP relay", lambda: pings(client.host, lab), 20)
    if mode == "kernel":
        wait_until("the kernel forwarding", lambda: udp_relay_status(udp)["kernel_packets"] > 0, 10)
    udp.server.kill()
    if mode == "kernel":  # what the dead process left, for its successor to undo
        assert "nft" in _relay_leftovers(udp, session_id)
    killed = time.monotonic()
    udp.server.start()
    wait_until("traffic after the restart", lambda: pings(client.host, lab), 90, every=0.5)
    gap = time.monotonic() - killed
    print(f"\nUDP relay ({mode}) kill + restart: traffic back after {gap:.1f} s")
    wait_until("both legs bound again", lambda: any(
        v["client"] and v["node"] for v in udp_relay_status(udp)["legs"].values()), 30)  # fmt: skip
    assert lab.whoami(client.host)["ip"] == home_public(lab)

    # --- stop: nothing of ours remains ----------------------------------------------------------
    client.disconnect()  # the session closes: its lease is released, the node drops its peer
    wait_until("the session closed", lambda: all(
        s["session_id"] != session_id for s in sessions(udp)), 20)  # fmt: skip
    time.sleep(2)  # the node's peer_remove: its keepalives would make new conntrack entries
    assert udp.server.proc is not None
    udp.server.proc.popen.terminate()
    udp.server.proc.popen.wait(60)
    left = _relay_leftovers(udp, session_id)
    assert left == {}, left
    assert not (udp.server.data_dir / "relay" / "relay-status.json").exists()
    udp.server.start()  # the module's teardown stops it as usual
