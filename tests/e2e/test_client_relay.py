"""higgsvpn in relay mode against real bosonserver and higgsnode in the lab.

One lab, server and node for the whole module (building them is the slow part); each test
adds its own client and disconnects it. The server-restart test runs last: it kills the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from higgs.lab.netns import netns_socket
from higgs.osnet import hoststate
from tests.e2e.client_system import (
    Client,
    System,
    check_tunnel,
    client_public,
    home_public,
    wait_until,
)
from tests.e2e.conftest import PRODUCT_MARKS, system_fixtures

pytestmark = PRODUCT_MARKS

relay_system, relay = system_fixtures("relay", direct=False)


def test_relay_mode_ping_http_dns_through_the_node(relay: System) -> None:
    lab = relay.lab
    client = relay.client()
    assert lab.whoami(client.host)["ip"] == client_public(lab)

    answer = client.connect("--mode", "relay")
    assert answer["mode"] == "relay"
    assert answer["address"].startswith("10.")

    check_tunnel(relay, client)
    status = client.status()
    assert status["connected"] is True
    assert status["mode"] == "relay"
    assert status["handshake_age_s"] is not None
    assert status["rx_bytes"] > 0
    assert status["tx_bytes"] > 0
    assert relay.server.relayed_datagrams() > 0

    client.disconnect()
    assert lab.whoami(client.host)["ip"] == client_public(lab)


def test_disconnect_restores_the_client_host_exactly(relay: System) -> None:
    client = relay.client()
    before = hoststate.snapshot(netns=client.host.ns)
    resolv_before = client.resolv_conf.read_text()
    client.connect("--mode", "relay")
    during = hoststate.snapshot(netns=client.host.ns)
    assert before.diff(during), "connect changed nothing on the host?"
    assert client.resolv_conf.read_text() != resolv_before
    client.disconnect()
    after = hoststate.snapshot(netns=client.host.ns)
    assert before.diff(after) == ""
    assert client.resolv_conf.read_text() == resolv_before
    assert not (client.state_dir / "daemon.pid").exists()


def _forced_out(system: System, client: Client) -> subprocess.CompletedProcess[str]:
    """An application forcing its way out of the physical interface, around the tunnel."""
    url = f"http://{system.lab.internet.ip}/"
    argv = ["curl", "-sS", "--noproxy", "*", "--interface", "eth0", "--max-time", "5", url]
    return client.host.run(argv, check=False, timeout=20)


def test_kill_switch_blocks_outside_the_tunnel(relay: System) -> None:
    client = relay.client()
    assert _forced_out(relay, client).returncode == 0, "the lab itself is broken"
    client.connect("--mode", "relay")
    forced = _forced_out(relay, client)
    assert forced.returncode != 0, f"kill switch let traffic out: {forced.stdout}"
    client.disconnect()
    assert _forced_out(relay, client).returncode == 0, "the kill switch outlived the connection"


_ETH_P_ALL = 0x0003
_PACKET_OUTGOING = 4


def _plain_pings_out(cap: socket.socket, to: str) -> tuple[int, int]:
    """(ICMP echo requests to ``to`` that left unencapsulated, IPv4 packets that left) among
    the frames captured on the client's uplink (the tunnel's, in relay mode, are TCP)."""
    target = socket.inet_aton(to)
    pings = out = 0
    while True:
        try:
            frame, addr = cap.recvfrom(65535)
        except BlockingIOError:
            return pings, out
        if addr[2] != _PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
            continue
        out += 1
        ip = frame[14:]
        if ip[9] == 1 and ip[16:20] == target and ip[(ip[0] & 0x0F) * 4] == 8:
            pings += 1


def test_kill_switch_removed_by_another_program_is_put_back_and_nothing_leaks(
    relay: System,
) -> None:
    lab = relay.lab
    client = relay.client()
    client.connect("--mode", "relay")
    assert _forced_out(relay, client).returncode != 0
    cap = netns_socket(client.host.ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    try:
        cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        cap.bind(("eth0", 0))
        cap.setblocking(False)
        # Traffic all along, every 10 ms, before, during and after the flush.
        ping = client.host.popen(
            ["ping", "-q", "-i", "0.01", "-c", "300", "-W", "1", lab.internet.ip], name="ping"
        )
        time.sleep(0.5)
        client.host.run(["nft", "flush", "ruleset"])
        flushed = time.monotonic()

        def back() -> bool:
            return "higgs" in client.host.run(["nft", "list", "tables"]).stdout

        wait_until("the kill switch to be put back", back, 5, every=0.05)
        took = time.monotonic() - flushed
        wait_until("ping to finish", lambda: not ping.alive(), 20)
        pings, sent = _plain_pings_out(cap, lab.internet.ip)
    finally:
        cap.close()
    print(f"kill switch back {took:.2f}s after `nft flush ruleset`; {sent} packets out")
    assert sent > 100, "the capture missed the tunnel's packets: it does not work"
    assert pings == 0, f"{pings} ping(s) left outside the tunnel"
    assert _forced_out(relay, client).returncode != 0, "the kill switch is not back"
    log = (client.state_dir / "daemon.log").read_text()
    assert "kill switch firewall rules were removed by another program" in log
    client.disconnect()
    assert _forced_out(relay, client).returncode == 0, "the kill switch outlived the connection"


def test_connect_failure_says_why_and_leaves_host_as_before(relay: System) -> None:
    client = relay.client()
    before = hoststate.snapshot(netns=client.host.ns)
    out = client.vpn("connect", "--server", f"http://{relay.lab.server.ip}:9", check=False)
    assert out.returncode == 1
    assert "cannot reach the server" in out.stderr
    assert "Traceback" not in out.stderr
    out = client.vpn("connect", "--mode", "direct", check=False)  # the node has no endpoint
    assert out.returncode == 1
    assert "no direct endpoint" in out.stderr
    assert not (client.state_dir / "daemon.pid").exists()
    assert before.diff(hoststate.snapshot(netns=client.host.ns)) == ""


def test_crash_then_cleanup_restores_the_host(relay: System) -> None:
    client = relay.client()
    before = hoststate.snapshot(netns=client.host.ns)
    resolv_before = client.resolv_conf.read_text()
    client.connect("--mode", "relay")
    pid = int((client.state_dir / "daemon.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)  # the client crashes: nothing is undone
    wait_until("the daemon to die", lambda: not Path(f"/proc/{pid}").exists(), 10, every=0.1)
    client.connected = False
    assert before.diff(hoststate.snapshot(netns=client.host.ns)) != ""
    assert client.status()["connected"] is False
    out = client.vpn("cleanup").stdout
    assert "undid" in out
    assert before.diff(hoststate.snapshot(netns=client.host.ns)) == ""
    assert client.resolv_conf.read_text() == resolv_before
    assert not (Path("/var/run/wireguard") / f"{client.interface}.sock").exists()


def test_node_gone_fails_over_to_another_node(relay: System) -> None:
    """The node's owner switches it off: the client moves to the other node by itself."""
    lab = relay.lab
    spare = relay.add_node(lab.printer, "n2")
    client = relay.client()
    first = client.connect("--mode", "relay")
    # The owner of whichever node the server picked for us switches it off.
    used = relay.node if first["node_id"] == relay.node.node_id else spare
    assert first["node_id"] == used.node_id
    used.stop()
    wait_until(
        "the client to move to the other node",
        lambda: client.status().get("node_id") not in (None, first["node_id"]),
        120,
        every=2.0,
    )
    status = client.status()
    assert status["state"] == "connected"
    assert status["reroutes"] >= 1
    wait_until(
        "traffic to flow through the other node",
        lambda: lab.whoami(client.host, timeout=4)["ip"] == home_public(lab),
        60,
        every=2.0,
    )


def test_node_crash_fails_over_without_user_action(relay: System) -> None:
    """A node dies without a goodbye (power cut): the server marks it offline after its missed
    heartbeats, and the client moves to another node by itself."""
    lab = relay.lab
    nodes = [relay.node, *relay.extra_nodes]
    for node in nodes:  # the previous test switched one off: bring every node back
        if node.proc is None or not node.proc.alive():
            node.start()
    if len(nodes) < 2:
        nodes.append(relay.add_node(lab.printer, "n2"))
    client = relay.client()
    first = client.connect("--mode", "relay")
    (used,) = [n for n in nodes if n.node_id == first["node_id"]]
    assert used.proc is not None
    used.proc.popen.kill()
    used.proc.popen.wait(10)
    wait_until(
        "the client to move off the crashed node",
        lambda: client.status().get("node_id") not in (None, first["node_id"]),
        180,
        every=3.0,
    )
    wait_until(
        "traffic to flow through the other node",
        lambda: lab.whoami(client.host, timeout=4)["ip"] == home_public(lab),
        60,
        every=2.0,
    )


def test_server_restart_mid_session_recovers_without_user_action(relay: System) -> None:
    lab = relay.lab
    client = relay.client()
    client.connect("--mode", "relay")
    assert lab.whoami(client.host)["ip"] == home_public(lab)

    relay.server.kill()
    # The tunnel is down (relay gone), and nothing leaves by the client's own router.
    with pytest.raises(Exception):  # noqa: B017,PT011 - curl fails one way or another
        lab.whoami(client.host, timeout=4)
    assert _forced_out(relay, client).returncode != 0, "traffic leaked while the tunnel was down"

    relay.server.start()
    wait_until(
        "the tunnel to recover after the server restart",
        lambda: lab.whoami(client.host, timeout=4)["ip"] == home_public(lab),
        120,
        every=2.0,
    )
    assert client.status()["connected"] is True
