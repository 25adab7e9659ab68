"""A real higgsnode in the lab's node namespace: start, serve, stop — and the host is exactly
as before, after a clean stop and after SIGKILL followed by `higgsnode cleanup`.

The server side here is a small node-API server (tests/integration/node/fake_server.py) in the
lab's server namespace; tests/e2e/test_node_direct.py runs the real bosonserver and a client.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from higgs.lab.lab import Lab
from higgs.lab.procs import LabProcess, stop_processes
from higgs.lab.product import API_PORT
from tests.integration.node.nodelab import REPO, NodeRun, host_state, osnet_state, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ENROLL = "hge_" + "e" * 24


@pytest.fixture
def lab(shared_lab: Lab, tmp_path: Path) -> Iterator[Lab]:
    """The module's lab, handed to each test as a fresh one would be: afterwards what the test
    started is stopped (higgsnode with SIGTERM, which undoes its changes; after a crash the
    test's own state dir is cleaned up) and the node's host must be exactly as the lab built
    it, or the test fails here naming the difference."""
    pristine = host_state(shared_lab.node)
    started = len(shared_lab.processes)
    yield shared_lab
    stop_processes(shared_lab.processes[started:], timeout=30)
    if host_state(shared_lab.node) != pristine:
        NodeRun(shared_lab, tmp_path / "state").cli("cleanup")
    assert host_state(shared_lab.node) == pristine, "the test left the node's host changed"


def start_api(lab: Lab) -> tuple[str, LabProcess]:
    proc = lab.server.popen(
        [sys.executable, "-m", "tests.integration.node.fake_server", "--host", lab.server.ip,
         "--port", str(API_PORT), "--enroll-key", ENROLL, "--interval", "1"],
        name="node-api",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    proc.wait_listening(API_PORT)
    return f"http://{lab.server.ip}:{API_PORT}", proc


def node_flags(url: str, backend: str) -> list[str]:
    return [
        "--server", url, "--enroll-key", ENROLL, "--firewall", backend,
        "--dns-upstream", "192.0.2.10", "--endpoint", "203.0.113.10:51820",
    ]  # fmt: skip


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_start_serves_and_stop_restores_the_host(lab: Lab, tmp_path: Path, backend: str) -> None:
    url, _ = start_api(lab)
    before, snap = host_state(lab.node), osnet_state(lab.node)
    node = NodeRun(lab, tmp_path / "state")
    node.start(*node_flags(url, backend))
    status = node.wait_server_online()

    cli = node.status_cli()
    assert cli["running"] is True
    assert cli["status"]["server"]["state"] == "online"
    human = node.cli("status").stdout
    assert "server     online" in human
    assert f"interface  {node.interface} 10.77.0.1/24" in human
    assert status["tunnel_address"] == "10.77.0.1/24"
    assert status["uplink"] == "eth0"
    # A 1500-byte uplink and an IPv4 endpoint: 1500 - 60 capped at WireGuard's 1420.
    assert status["mtu"]["mtu"] == 1420
    during = host_state(lab.node)
    assert "net.ipv4.ip_forward=1" in str(during["sysctl"])
    assert f"{node.interface}:" in str(during["links"])
    assert "10.77.0.1/24" in str(during["addresses"])
    # The DNS forwarder answers on the tunnel address with what the lab's DNS server says.
    dig = lab.node.run(
        [sys.executable, "-c",
         "import dns.resolver as r; x=r.Resolver(configure=False); x.nameservers=['10.77.0.1'];"
         "print(x.resolve('www.example.test','A')[0])"],
    )  # fmt: skip
    assert dig.stdout.strip() == "192.0.2.10"
    diag = node.cli("diagnose", "--server", url)
    assert diag.returncode == 0, diag.stdout + diag.stderr
    assert "masquerade of 10.77.0.0/24 on eth0" in diag.stdout
    assert f"{node.interface} mtu 1420 (uplink 1500; automatic 1420)" in diag.stdout

    stop = node.cli("stop")
    assert stop.returncode == 0, stop.stderr
    proc = node.proc
    assert proc is not None
    wait_until("higgsnode to exit", lambda: not proc.alive(), 30)
    assert proc.popen.returncode == 0, proc.log_text()[-3000:]
    # Byte for byte (but counters), the iptables backend included: the nftables tables and
    # chains iptables-nft created for our rules are gone too.
    assert snap.diff(osnet_state(lab.node)) == ""
    assert host_state(lab.node) == before
    assert node.status()["running"] is False


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_sigkill_then_cleanup_restores_the_host(lab: Lab, tmp_path: Path, backend: str) -> None:
    url, _ = start_api(lab)
    before, snap = host_state(lab.node), osnet_state(lab.node)
    node = NodeRun(lab, tmp_path / "state")
    proc = node.start(*node_flags(url, backend))
    node.wait_server_online()
    os.kill(proc.pid, signal.SIGKILL)
    wait_until("higgsnode to die", lambda: not proc.alive(), 10)
    assert host_state(lab.node) != before  # the crash left its changes behind

    result = node.cli("cleanup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert snap.diff(osnet_state(lab.node)) == ""
    assert host_state(lab.node) == before
    assert not Path(f"/var/run/wireguard/{node.interface}.sock").exists()
    again = node.cli("cleanup")
    assert again.returncode == 0
    assert "clean" in again.stdout


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_sigkill_then_restart_recovers_and_stops_clean(
    lab: Lab, tmp_path: Path, backend: str
) -> None:
    url, _ = start_api(lab)
    before, snap = host_state(lab.node), osnet_state(lab.node)
    node = NodeRun(lab, tmp_path / "state")
    proc = node.start(*node_flags(url, backend))
    first = node.wait_server_online()
    os.kill(proc.pid, signal.SIGKILL)
    wait_until("higgsnode to die", lambda: not proc.alive(), 10)

    restarted = node.start(*node_flags(url, backend))
    second = node.wait_server_online()
    assert second["server"]["node_id"] == first["server"]["node_id"]  # same identity
    assert node.cli("stop").returncode == 0
    wait_until("higgsnode to exit", lambda: not restarted.alive(), 30)
    assert snap.diff(osnet_state(lab.node)) == ""
    assert host_state(lab.node) == before


def test_nat_follows_the_default_route_to_another_interface(lab: Lab, tmp_path: Path) -> None:
    url, _ = start_api(lab)
    node = NodeRun(lab, tmp_path / "state")
    node.start(*node_flags(url, "nft"))
    node.wait_server_online()
    table = f"higgsnode_{node.interface.replace('-', '_')}"

    def masquerades_on(ifname: str) -> bool:
        ruleset = lab.node.run(["nft", "list", "table", "inet", table]).stdout
        return f'oifname "{ifname}"' in ruleset and "masquerade" in ruleset

    assert masquerades_on("eth0")
    # A second uplink appears and the default route moves to it.
    lab.node.run(
        ["ip", "-batch", "-"],
        input=(
            "link add up-2.x type veth peer name up-2.y\n"
            "link set up-2.x up\nlink set up-2.y up\n"
            "addr add 172.31.9.2/24 dev up-2.x\n"
            "route replace default via 172.31.9.1 dev up-2.x onlink\n"
        ),
    )
    try:
        wait_until("NAT to move to up-2.x", lambda: masquerades_on("up-2.x"), 20)
        assert not masquerades_on("eth0")
        wait_until(
            "status to show the new uplink",
            lambda: (node.status().get("status") or {}).get("uplink") == "up-2.x",
            10,
        )
    finally:
        lab.node.run(["ip", "link", "del", "up-2.x"], check=False)
        lab.node.run(["ip", "route", "replace", "default", "via", "192.168.1.1", "dev", "eth0"])
    wait_until("NAT to come back to eth0", lambda: masquerades_on("eth0"), 20)
    assert node.cli("stop").returncode == 0


def test_a_refused_enrollment_key_stops_the_node_before_it_touches_the_host(
    lab: Lab, tmp_path: Path
) -> None:
    url, _ = start_api(lab)
    before = host_state(lab.node)
    node = NodeRun(lab, tmp_path / "state")
    flags = node_flags(url, "nft")
    flags[flags.index("--enroll-key") + 1] = "hge_not_a_key_the_server_knows"
    proc = node.start(*flags)
    wait_until("higgsnode to give up", lambda: not proc.alive(), 30)
    assert proc.popen.returncode == 1
    log = proc.log_text()
    assert "rejected the enrollment key" in log
    assert "Traceback" not in log
    assert log.count("/v1/nodes/register") == 1  # one attempt, no retry loop
    assert host_state(lab.node) == before


def test_the_node_serves_while_the_server_is_unreachable_and_links_up_later(
    lab: Lab, tmp_path: Path
) -> None:
    node = NodeRun(lab, tmp_path / "state")
    node.start(*node_flags(f"http://{lab.server.ip}:{API_PORT}", "nft"))

    def unreachable() -> dict[str, object] | None:
        st = node.status().get("status") or {}
        return st if (st.get("server") or {}).get("state") == "unreachable" else None

    status = wait_until("the node to report the server unreachable", unreachable, 40)
    assert status["tunnel_address"] == "10.77.0.1/24"  # the tunnel is up all the same
    assert "10.77.0.1/24" in str(host_state(lab.node)["addresses"])
    start_api(lab)
    node.wait_server_online(timeout=90)  # backoff with jitter: up to a minute between tries
    assert node.cli("stop").returncode == 0
