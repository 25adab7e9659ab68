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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from higgs.lab.lab import Lab
from higgs.lab.procs import LabProcess
from higgs.lab.wireguard import new_keypair, start_wireguard_go, wg_set, wg_show
from tests.integration.node.nodelab import NodeRun, host_state, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.root]

# The server program; HIGGS_TEST_BOSONSERVER can point at another checkout's interpreter.
BOSON = shlex.split(
    os.environ.get("HIGGS_TEST_BOSONSERVER", f"{sys.executable} -m higgs.server.cli")
)
API_PORT, RELAY_PORT, WG_PORT = 8080, 8081, 51820
CLIENT_MARK = 51820


def boson(data: Path, *args: str) -> str:
    out = subprocess.run(
        [*BOSON, *args, "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def start_server(lab: Lab, data: Path) -> tuple[str, str, str, LabProcess]:
    """Migrated database, one enrollment key, one client; `bosonserver serve` in the server ns."""
    boson(data, "migrate")
    enroll_key = boson(data, "enroll", "create", "--uses", "10").split()[0]
    client_token = next(
        t for t in boson(data, "client", "add", "alice").split() if t.startswith("hgc_")
    )
    ip = lab.server.ip
    proc = lab.server.popen(
        [*BOSON, "serve", "--data-dir", str(data), "--listen", f"{ip}:{API_PORT}",
         "--relay-listen", f"{ip}:{RELAY_PORT}", "--public-url", f"http://{ip}:{API_PORT}",
         "--relay-url", f"ws://{ip}:{RELAY_PORT}"],
        name="bosonserver",
    )  # fmt: skip
    proc.wait_listening(API_PORT, timeout=30)
    proc.wait_listening(RELAY_PORT, timeout=30)
    return f"http://{ip}:{API_PORT}", enroll_key, client_token, proc


def request_route(lab: Lab, url: str, token: str, public_key: str) -> dict[str, Any]:
    """POST /v1/routes from the client's namespace, as the client program would."""
    body = json.dumps({"client_public_key": public_key, "mode": "direct"})
    out = lab.client.run(
        ["curl", "-sS", "--max-time", "10", "-X", "POST", "-H", f"Authorization: Bearer {token}",
         "-H", "Content-Type: application/json", "-d", body, f"{url}/v1/routes"],
    )  # fmt: skip
    route: dict[str, Any] = json.loads(out.stdout)
    assert "session_id" in route, route
    return route


def stock_client(lab: Lab, route: dict[str, Any], private_key: str) -> str:
    """wireguard-go + wg + ip on the client, wg-quick style, from the route answer only."""
    wgc = route["wireguard"]
    ifname = lab.ifname("hc")
    start_wireguard_go(lab.client, ifname)
    wg_set(
        lab.client, ifname, "fwmark", str(CLIENT_MARK),
        "peer", wgc["node_public_key"], "endpoint", route["direct"]["endpoint"],
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


@pytest.mark.parametrize("ending", ["stop", "sigkill+cleanup"])
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_stock_client_through_the_node_in_direct_mode(
    lab: Lab, tmp_path: Path, backend: str, ending: str
) -> None:
    url, enroll_key, client_token, _ = start_server(lab, tmp_path / "server")
    lab.forward_udp(WG_PORT)  # the owner's port forward on the home router
    before = host_state(lab.node)

    node = NodeRun(lab, tmp_path / "node")
    proc = node.start(
        "--server", url, "--enroll-key", enroll_key, "--firewall", backend,
        "--listen-port", str(WG_PORT), "--endpoint", f"{lab.home_router.ip}:{WG_PORT}",
        "--dns-upstream", lab.internet.ip, "--country", "DE",
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

    status = node.status()["status"]
    peer = next(p for p in status["peers"] if p["public_key"] == keys.public)
    assert peer["rx_bytes"] > 0
    assert peer["tx_bytes"] > 0

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
