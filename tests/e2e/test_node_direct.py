"""Issue 4's finish line: a stock WireGuard client, configured from what the real bosonserver
answers, reaches the internet through a real higgsnode behind the lab's NAT home router in
direct mode (the router forwards the port). The internet host sees the home router's public
address; names resolve through the node's forwarder; and the node's host is exactly as before
— after `higgsnode stop`, and after SIGKILL followed by `higgsnode cleanup` — with both
firewall backends.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from higgs.lab.lab import Lab
from higgs.lab.procs import LabProcess
from higgs.lab.product import ServerProgram
from higgs.lab.wireguard import new_keypair, start_wireguard_go, wg_set, wg_show
from tests.integration.node.nodelab import REPO, NodeRun, host_state, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.root]

# HIGGS_TEST_BOSONSERVER can point at another checkout's bosonserver (its interpreter with
# `-m higgs.bosonserver`).
BOSON = tuple(shlex.split(os.environ.get("HIGGS_TEST_BOSONSERVER", "")))
WG_PORT = 51820
CLIENT_MARK = 51820


def server_program(lab: Lab, data: Path) -> ServerProgram:
    # Short heartbeats: re-registration after a 409 happens at the next one.
    env = {"BOSON_HEARTBEAT_INTERVAL_S": "2"}
    return ServerProgram(lab, data, env=env, command=BOSON)


def start_server(lab: Lab, data: Path) -> tuple[str, str, str, LabProcess]:
    """Migrated database, one enrollment key, one client; `bosonserver serve` in the server ns."""
    server = server_program(lab, data)
    server.cli("migrate")
    # Side by side: each CLI start costs seconds on a busy host.
    with ThreadPoolExecutor(2) as pool:
        enrolled = pool.submit(server.cli, "enroll", "create", "--uses", "10")
        added = pool.submit(server.cli, "client", "add", "alice")
        enroll_key = enrolled.result().split()[0]
        client_token = next(t for t in added.result().split() if t.startswith("hgc_"))
    proc = server.start(timeout=30)
    return server.url, enroll_key, client_token, proc


def request_route(
    lab: Lab, url: str, token: str, public_key: str, mode: str = "direct"
) -> dict[str, Any]:
    """POST /v1/routes from the client's namespace, as the client program would."""
    body = json.dumps({"client_public_key": public_key, "mode": mode})
    out = lab.client.run(
        ["curl", "-sS", "--max-time", "10", "-X", "POST", "-H", f"Authorization: Bearer {token}",
         "-H", "Content-Type: application/json", "-d", body, f"{url}/v1/routes"],
    )  # fmt: skip
    route: dict[str, Any] = json.loads(out.stdout)
    assert "session_id" in route, route
    return route


def stock_client(
    lab: Lab, route: dict[str, Any], private_key: str, endpoint: str | None = None
) -> str:
    """wireguard-go + wg + ip on the client, wg-quick style, from the route answer only."""
    wgc = route["wireguard"]
    endpoint = endpoint or route["direct"]["endpoint"]
    ifname = lab.ifname("hc")
    start_wireguard_go(lab.client, ifname)
    wg_set(
        lab.client, ifname, "fwmark", str(CLIENT_MARK),
        "peer", wgc["node_public_key"], "endpoint", endpoint,
        "allowed-ips", ",".join(a for a in wgc["allowed_ips"] if ":" not in a),
        "persistent-keepalive", str(wgc["persistent_keepalive"]),
        private_key=private_key,
    )  # fmt: skip
    lab.client.run(
        ["ip", "-batch", "-"],
        input=(
            f"addr add {wgc['address']} dev {ifname}\n"
            f"link set {ifname} mtu {wgc['mtu']} up\n"
            f"route add default dev {ifname} table {CLIENT_MARK}\n"
            f"rule add not fwmark {CLIENT_MARK} table {CLIENT_MARK}\n"
            "rule add table main suppress_prefixlength 0\n"
        ),
    )
    lab.client.sysctl("net.ipv4.conf.all.src_valid_mark", 1)
    return ifname


def wait_handshake(lab: Lab, ifname: str, probe: str) -> None:
    def shaken() -> bool:
        out = wg_show(lab.client, ifname, "latest-handshakes").split()
        if len(out) >= 2 and int(out[1]) > 0:
            return True
        with lab.client.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", (probe, 9))  # makes WireGuard start a handshake now
        return False

    wait_until("the client's WireGuard handshake with the node", shaken, 20, 0.3)


def resolve_via(lab: Lab, server: str, name: str) -> str:
    out = lab.client.run(
        [sys.executable, "-c",
         "import sys, dns.resolver as r; x = r.Resolver(configure=False); "
         "x.nameservers = [sys.argv[1]]; x.lifetime = 5; print(x.resolve(sys.argv[2], 'A')[0])",
         server, name],
    )  # fmt: skip
    return out.stdout.strip()


@dataclass
class Up:
    node: NodeRun
    proc: LabProcess
    public_key: str
    ifname: str


def bring_up(lab: Lab, tmp_path: Path, backend: str, *extra: str) -> Up:
    """Server, node (port forwarded), route for a stock client, client tunnel with handshake."""
    url, enroll_key, client_token, _ = start_server(lab, tmp_path / "server")
    lab.forward_udp(WG_PORT)  # the owner's port forward on the home router
    node = NodeRun(lab, tmp_path / "node")
    proc = node.start(
        "--server", url, "--enroll-key", enroll_key, "--firewall", backend,
        "--listen-port", str(WG_PORT), "--endpoint", f"{lab.home_router.ip}:{WG_PORT}",
        "--dns-upstream", lab.internet.ip, "--country", "DE", *extra,
    )  # fmt: skip
    node.wait_server_online()
    wait_until(
        "the node's control link",
        lambda: ((node.status().get("status") or {}).get("control") or {}).get("connected"),
        30,
    )
    keys = new_keypair()
    route = request_route(lab, url, client_token, keys.public)
    assert route["direct"]["endpoint"] == f"{lab.home_router.ip}:{WG_PORT}"
    assert route["wireguard"]["dns"] == ["10.77.0.1"]
    wait_until(
        "the node to add the client as a peer",
        lambda: any(
            p["public_key"] == keys.public
            for p in (node.status().get("status") or {}).get("peers", [])
        ),
        20,
    )
    ifname = stock_client(lab, route, keys.private)
    wait_handshake(lab, ifname, "10.77.0.1")
    return Up(node, proc, keys.public, ifname)


@pytest.mark.parametrize("ending", ["stop", "sigkill+cleanup"])
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_stock_client_through_the_node_in_direct_mode(
    lab: Lab, tmp_path: Path, backend: str, ending: str
) -> None:
    before = host_state(lab.node)
    up = bring_up(lab, tmp_path, backend)
    node, proc = up.node, up.proc

    # The internet sees the home router's public address, not the client's router.
    seen = lab.whoami(lab.client)
    assert seen["ip"] == lab.home_router.ip
    # Names resolve through the node's forwarder; the internet's DNS sees the home router.
    assert resolve_via(lab, "10.77.0.1", "www.example.test") == lab.internet.ip
    # A query aimed at some other resolver is intercepted and answered by the node anyway.
    assert resolve_via(lab, lab.server.ip, "example.test") == lab.internet.ip
    assert any(q.source == lab.home_router.ip for q in lab.dns_queries())
    # The owner's printer stays out of reach.
    with lab.client.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect((lab.printer.ip, 9100))
        except OSError:  # refused, unreachable or timed out: all mean "blocked"
            reached = False
        else:
            reached = True
    assert not reached

    def peer_counted() -> dict[str, Any] | None:
        # status.json is rewritten every 2 s: the traffic above shows up at the next write.
        peers = node.status()["status"]["peers"]
        peer = next(p for p in peers if p["public_key"] == up.public_key)
        return peer if peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0 else None

    wait_until("the node's status to count the client's traffic", peer_counted, 15, 0.5)

    if ending == "stop":
        assert node.cli("stop").returncode == 0
        wait_until("higgsnode to exit", lambda: not proc.alive(), 30)
        assert proc.popen.returncode == 0, proc.log_text()[-3000:]
    else:
        os.kill(proc.pid, signal.SIGKILL)
        wait_until("higgsnode to die", lambda: not proc.alive(), 10)
        time.sleep(0.2)
        cleanup = node.cli("cleanup")
        assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert host_state(lab.node) == before


CAP_MBIT = 8


def test_download_through_the_node_stays_within_the_owners_cap(lab: Lab, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f"[shaping]\ntotal_down_mbit = {CAP_MBIT}\ntotal_up_mbit = {CAP_MBIT}\n")
    bring_up(lab, tmp_path, "nft", "--config", str(config))
    rates = []
    for reverse in (["-R"], []):  # download (internet -> client), then upload
        result = lab.client.run(
            ["iperf3", "-c", lab.internet.ip, "-p", "5201", "-t", "4", "-O", "1", "-J", *reverse],
            timeout=40,
        )
        report = json.loads(result.stdout)
        rates.append(report["end"]["sum_received"]["bits_per_second"] / 1e6)
    print(f"cap {CAP_MBIT} Mbit/s: download {rates[0]:.2f}, upload {rates[1]:.2f} Mbit/s")
    for rate in rates:
        assert rate <= CAP_MBIT * 1.1, rates
        assert rate >= CAP_MBIT * 0.7, rates  # shaped, not starved


def test_relayed_session_reaches_the_internet_through_the_node(lab: Lab, tmp_path: Path) -> None:
    """No port forward: the client's WireGuard talks to a local bridge, the server relays, and
    the node bridges the session to its WireGuard port from a socket of its own."""
    url, enroll_key, client_token, _ = start_server(lab, tmp_path / "server")
    before = host_state(lab.node)
    node = NodeRun(lab, tmp_path / "node")
    proc = node.start(
        "--server", url, "--enroll-key", enroll_key, "--listen-port", str(WG_PORT),
        "--dns-upstream", lab.internet.ip,
    )  # fmt: skip
    node.wait_server_online()
    wait_until(
        "the node's control link",
        lambda: ((node.status().get("status") or {}).get("control") or {}).get("connected"),
        30,
    )
    keys = new_keypair()
    route = request_route(lab, url, client_token, keys.public, mode="relay")
    assert route["direct"] is None
    relay = route["relay"]
    bridge = lab.client.popen(
        [sys.executable, "-u", "-m", "tests.integration.node.relay_client", relay["url"],
         relay["token"], str(relay["channel"]), str(CLIENT_MARK)],
        name="relay-bridge",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip

    def bridge_port() -> str | None:
        lines = bridge.log_text().splitlines()
        return lines[0].strip() if lines and lines[0].strip().isdigit() else None

    port = wait_until("the client bridge's port", bridge_port, 20)
    ifname = stock_client(lab, route, keys.private, f"127.0.0.1:{port}")
    wait_handshake(lab, ifname, "10.77.0.1")

    assert lab.whoami(lab.client)["ip"] == lab.home_router.ip
    status = wait_until(
        "the node to report the relayed session",
        lambda: ((node.status().get("status") or {}).get("control") or {}).get("relayed_sessions"),
        10,
    )
    assert status == 1
    peer = next(p for p in node.status()["status"]["peers"] if p["public_key"] == keys.public)
    assert peer["rx_bytes"] > 0

    assert node.cli("stop").returncode == 0
    wait_until("higgsnode to exit", lambda: not proc.alive(), 30)
    assert host_state(lab.node) == before


def test_node_registers_again_after_the_server_stopped_it(lab: Lab, tmp_path: Path) -> None:
    """DELETE /v1/nodes/{id} (what a stop does) while the node runs: its next heartbeat gets 409
    node_stopped, and it registers again with its own token — same node id, no enrollment use
    (the key allows one registration only)."""
    url, _, _, _ = start_server(lab, tmp_path / "server")
    one_use = server_program(lab, tmp_path / "server").cli("enroll", "create", "--uses", "1")
    one_use = one_use.split()[0]
    node = NodeRun(lab, tmp_path / "node")
    node.start("--server", url, "--enroll-key", one_use, "--dns-upstream", lab.internet.ip)
    first = node.wait_server_online()["server"]
    identity = json.loads((tmp_path / "node" / "identity.json").read_text())
    lab.node.run(
        ["curl", "-sS", "--fail", "--max-time", "10", "-X", "DELETE",
         "-H", f"Authorization: Bearer {identity['node_token']}",
         f"{url}/v1/nodes/{identity['node_id']}"],
    )  # fmt: skip

    def registered_again() -> dict[str, Any] | None:
        server = (node.status().get("status") or {}).get("server") or {}
        return server if server.get("registrations", 0) > first["registrations"] else None

    again = wait_until("the node to register again", registered_again, 60)
    assert again["node_id"] == first["node_id"]
    wait_until(
        "the node to be online again",
        lambda: ((node.status().get("status") or {}).get("server") or {}).get("state") == "online",
        30,
    )
    assert node.cli("stop").returncode == 0
