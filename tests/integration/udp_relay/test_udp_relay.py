"""Two real wireguard-go peers talk through the UDP relay in namespaces (root).

    client ns 10.0.1.2 ── relay ns (10.0.1.1 | 10.0.2.1 | 10.0.3.1; relay address 10.0.9.1)
    node ns 10.0.2.2 ───┘      └── attacker ns 10.0.3.2-11

Both forwarding modes: the binding, spoofing from other addresses (10,000 datagrams, incl.
captured data with live receiver indices) redirects nothing while a ping runs, SIGKILL and a
restart of the relay resume the traffic, and after stop no nft table or conntrack entry of the
relay remains. Then the same pair over IPv6 (both legs and the relay address v6).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from higgs.common.keys import PrivateKey
from higgs.lab.wait import wait_until
from higgs.osnet.relaynat import RelayNatNames
from higgs.osnet.wireguard import Peer
from higgs.relay.forwarder import SessionSpec
from higgs.relay.runner import STATUS_FILE
from higgs.relay.sessions_file import write_sessions
from tests.integration.osnet.conftest import veth
from tests.integration.osnet.namespaces import Namespaces, sh
from tests.integration.osnet.wgpair import WgEndSpec, wireguard_go_pair

from . import scripts

pytestmark = pytest.mark.root

RELAY_IP = "10.0.9.1"
PORT = 40003
ATTACKERS = [f"10.0.3.{i}" for i in range(2, 12)]

T = TypeVar("T")


def pub(key: PrivateKey) -> bytes:
    return base64.b64decode(key.public_b64())


def ns_run(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )


def wait_for(what: str, check: Callable[[], T], timeout: float = 40.0) -> T:
    """The lab's wait_until, with this module's longer default (the relay starts a Python
    process and nftables)."""
    return wait_until(what, check, timeout)


def ping_ok(ns: str, count: int = 1) -> bool:
    return ns_run(ns, "ping", "-c", str(count), "-W", "1", "-i", "0.2", "10.99.0.1").returncode == 0


@dataclass
class Lab:
    client: str
    relay: str
    node: str
    attacker: str
    tmp: Path
    instance: str
    client_key: PrivateKey
    node_key: PrivateKey
    proc: subprocess.Popen[str] | None = None
    _dead_pid: int | None = None
    relay_ip: str = RELAY_IP

    @property
    def state_dir(self) -> Path:
        return self.tmp / "relay"

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state_dir / STATUS_FILE).read_text()))
        except (OSError, ValueError):
            return {}

    def start_relay(self, *, userspace: bool) -> None:
        argv = [sys.executable, "-m", "higgs.relay", "--relay-ip", self.relay_ip,
                "--relay-ports", "40000-40009", "--relay-state-dir", str(self.state_dir),
                "--relay-instance", self.instance,
                "--relay-metrics-listen", "127.0.0.1:9419",
                "--sessions-file", str(self.tmp / "s.json")]  # fmt: skip
        if userspace:
            argv.append("--userspace")
        log = (self.tmp / "relay.log").open("a")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.relay, *argv], stdout=log, stderr=log, text=True
        )
        proc = self.proc

        def serving() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the relay exited: {(self.tmp / 'relay.log').read_text()}")
            status = self.status()
            return str(PORT) in status.get("legs", {}) and status.get("pid") != self._dead_pid

        wait_for("the relay's status", serving)

    def stop_relay(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self._dead_pid = self.status().get("pid")
        self.proc.send_signal(sig)
        assert self.proc.wait(timeout=30) in (0, -sig)
        self.proc = None

    def metrics(self) -> dict[str, float]:
        """The relay's /metrics, as ``{'name{labels}': value}``."""
        out = ns_run(self.relay, "curl", "-sS", "--noproxy", "*", "http://127.0.0.1:9419/metrics")
        values = {}
        for line in out.stdout.splitlines():
            if line.startswith("higgs_udp_relay_"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def table(self) -> str:
        table = RelayNatNames.for_instance(self.instance).table
        result = ns_run(self.relay, "nft", "list", "table", "ip", table)
        return result.stdout if result.returncode == 0 else ""

    def conntrack(self) -> str:
        argv = ["conntrack", "-L", "-p", "udp", "--orig-dst", self.relay_ip]
        return ns_run(self.relay, *argv).stdout


@pytest.fixture
def lab(namespaces: Namespaces, tmp_path: Path) -> Iterator[Lab]:
    c, r, n, a = (namespaces.new(x) for x in ("c", "r", "n", "a"))
    veth(c, "vc", r, "rc")
    veth(n, "vn", r, "rn")
    veth(a, "va", r, "ra")
    for ns, dev, addr in ((c, "vc", "10.0.1.2/24"), (r, "rc", "10.0.1.1/24"),
                          (n, "vn", "10.0.2.2/24"), (r, "rn", "10.0.2.1/24"),
                          (r, "ra", "10.0.3.1/24")):  # fmt: skip
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
    for addr in ATTACKERS:
        sh("ip", "-n", a, "addr", "add", f"{addr}/24", "dev", "va")
    sh("ip", "-n", r, "addr", "add", f"{RELAY_IP}/32", "dev", "lo")
    for ns, gw in ((c, "10.0.1.1"), (n, "10.0.2.1"), (a, "10.0.3.1")):
        sh("ip", "-n", ns, "route", "add", "default", "via", gw)
    yield from _peers_through_the_relay(namespaces, tmp_path, (c, r, n, a), RELAY_IP)


def _peers_through_the_relay(
    namespaces: Namespaces, tmp_path: Path, hosts: tuple[str, str, str, str], relay_ip: str
) -> Iterator[Lab]:
    """Both wireguard-go ends with the relay as each other's endpoint; the relay is started
    by the test and killed at the end."""
    c, r, n, a = hosts
    ck, nk = PrivateKey.generate(), PrivateKey.generate()
    write_sessions(tmp_path / "s.json", [SessionSpec("s_test", PORT, pub(ck), pub(nk))])
    tag = namespaces.tag.replace("-", "")[:12]
    lab = Lab(c, r, n, a, tmp_path, tag, ck, nk, relay_ip=relay_ip)
    name_c, name_n = namespaces.ifname("c"), namespaces.ifname("n")
    with wireguard_go_pair(
        tmp_path, WgEndSpec(c, name_c, ck, "10.99.0.2/24"), WgEndSpec(n, name_n, nk, "10.99.0.1/24")
    ) as (client, node):
        endpoint = f"[{relay_ip}]:{PORT}" if ":" in relay_ip else f"{relay_ip}:{PORT}"
        # The node: the relay as its peer's endpoint, with a persistent keepalive (§5.2).
        node.wg.set_peer(Peer(ck.public_b64(), ("10.99.0.2/32",), endpoint, 1))
        client.wg.set_peer(Peer(nk.public_b64(), ("10.99.0.1/32",), endpoint))
        try:
            yield lab
        finally:
            if lab.proc is not None:
                lab.proc.kill()
                lab.proc.wait()


def capture_data(lab: Lab) -> list[str]:
    capture = subprocess.Popen(
        ["ip", "netns", "exec", lab.relay, sys.executable, "-c", scripts.CAPTURE, str(PORT),
         "rc", "rn"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    ping_ok(lab.client, 10)
    out, _ = capture.communicate(timeout=30)
    packets = out.split()
    assert len(packets) == 2, f"captured {len(packets)} data datagrams"
    return packets


@pytest.mark.parametrize("mode", ["kernel", "userspace"])
def test_two_wireguard_go_peers_through_the_relay(lab: Lab, mode: str) -> None:
    userspace = mode == "userspace"
    lab.start_relay(userspace=userspace)
    assert lab.status()["mode"] == mode
    wait_for("a ping through the relay", lambda: ping_ok(lab.client))
    status = wait_for("the bind in the status", lambda: (s := lab.status())["binds"] == 1 and s)
    legs = status["legs"][str(PORT)]
    assert legs == {"client": "10.0.1.2:51820", "node": "10.0.2.2:51820"}
    if mode == "kernel":
        # The flow goes into the kernel CONFIRM_S after the bind (the handshake's last packet
        # passes in userspace first, docs/protocol.md §5.3).
        flow = "10.0.1.2 . 51820 . 40003 : 10.0.2.2 . 51820"
        wait_for("the flow in the kernel", lambda: flow in lab.table())
        before = lab.status()
        assert ping_ok(lab.client, 20)
        after = wait_for("the kernel counters", lambda: (s := lab.status())["kernel_packets"]
                         >= before["kernel_packets"] + 40 and s)  # fmt: skip
        # The 20 echo requests and replies went through nftables, not through Python.
        assert after["userspace_packets"] - before["userspace_packets"] < 10
    else:
        assert lab.table() == ""
        before = lab.status()["userspace_packets"]
        assert ping_ok(lab.client, 20)
        wait_for("the userspace counters", lambda: lab.status()["userspace_packets"] >= before + 40)

    # --- spoofing: 10,000 datagrams from other addresses while a ping runs ------------------
    captured = capture_data(lab)
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", lab.client, "ping", "-c", "60", "-i", "0.1", "-W", "1",
         "10.99.0.1"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    spoof = ns_run(lab.attacker, sys.executable, "-c", scripts.SPOOF, RELAY_IP, str(PORT),
                   pub(lab.client_key).hex(), pub(lab.node_key).hex(),
                   ",".join(ATTACKERS), *captured, timeout=60)  # fmt: skip
    assert spoof.stdout.strip() == "10000", spoof.stderr
    out, _ = pinger.communicate(timeout=60)
    received = int(out.split(" received")[0].rsplit(" ", 1)[-1])
    assert received >= 55, out  # the session kept working throughout
    status = lab.status()
    assert status["legs"][str(PORT)] == legs  # nothing was redirected
    assert status["rebinds"] == 0
    drops = status["drops"]
    assert drops.get("unbound_source", 0) >= 5000  # the replayed data, live indices and all
    assert drops.get("rate_limited", 0) + drops.get("unconfirmed", 0) >= 4000
    assert ping_ok(lab.client)
    metrics = lab.metrics()
    path = "kernel" if mode == "kernel" else "userspace"
    assert metrics[f'higgs_udp_relay_packets_total{{path="{path}"}}'] > 0
    assert metrics[f'higgs_udp_relay_bytes_total{{path="{path}"}}'] > 0
    assert metrics["higgs_udp_relay_binds_total"] == 1
    assert metrics["higgs_udp_relay_rebinds_total"] == 0
    assert metrics['higgs_udp_relay_dropped_total{reason="unbound_source"}'] >= 5000
    assert metrics['higgs_udp_relay_ports{state="leased"}'] == 1
    assert metrics['higgs_udp_relay_ports{state="free"}'] == 9

    # --- the relay is killed mid-session and restarted --------------------------------------
    lab.stop_relay(signal.SIGKILL)
    if mode == "kernel":
        assert lab.table() != ""  # what the dead process left ...
    lab.start_relay(userspace=userspace)  # ... its successor undoes, then serves again
    wait_for("traffic after the restart", lambda: ping_ok(lab.client), timeout=60)
    wait_for("the same legs bound again", lambda: lab.status()["legs"][str(PORT)] == legs)

    # --- stop: nothing of ours remains -------------------------------------------------------
    # The peers go first: their keepalives toward the relay address would make new entries.
    sh("ip", "-n", lab.client, "link", "set", "vc", "down")
    sh("ip", "-n", lab.node, "link", "set", "vn", "down")
    lab.stop_relay()
    assert lab.table() == ""
    assert lab.conntrack().strip() == ""
    assert not (lab.state_dir / STATUS_FILE).exists()
    journal = json.loads((lab.state_dir / "journal.json").read_text())
    assert journal["entries"] == []
    assert os.path.exists(lab.state_dir / "journal.json")


RELAY_IP6 = "fd00:9::1"


@pytest.fixture
def lab6(namespaces: Namespaces, tmp_path: Path) -> Iterator[Lab]:
    """The client and node legs and the relay address in IPv6; the tunnel inside stays v4."""
    c, r, n = (namespaces.new(x) for x in ("c", "r", "n"))
    veth(c, "vc", r, "rc")
    veth(n, "vn", r, "rn")
    sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    for ns, dev, addr in ((c, "vc", "fd00:1::2/64"), (r, "rc", "fd00:1::1/64"),
                          (n, "vn", "fd00:2::2/64"), (r, "rn", "fd00:2::1/64"),
                          (r, "lo", f"{RELAY_IP6}/128")):  # fmt: skip
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, "nodad")
    for ns, gw in ((c, "fd00:1::1"), (n, "fd00:2::1")):
        sh("ip", "-n", ns, "-6", "route", "add", "default", "via", gw)
    yield from _peers_through_the_relay(namespaces, tmp_path, (c, r, n, ""), RELAY_IP6)


def test_two_wireguard_go_peers_through_the_relay_over_ipv6(lab6: Lab) -> None:
    lab6.start_relay(userspace=False)  # kernel asked for: the v6 flow takes userspace
    status = lab6.status()
    assert status["mode"] == "userspace"
    assert "IPv4 only" in status["why"]
    wait_for("a ping through the relay over IPv6", lambda: ping_ok(lab6.client))
    status = wait_for("the bind", lambda: (s := lab6.status())["binds"] == 1 and s)
    assert status["legs"][str(PORT)] == {"client": "[fd00:1::2]:51820", "node": "[fd00:2::2]:51820"}
    assert ping_ok(lab6.client, 10)
    wait_for("the userspace counters", lambda: lab6.status()["userspace_packets"] >= 20)
    # SIGKILL and a restart: the successor undoes, serves again, the peers bind again.
    lab6.stop_relay(signal.SIGKILL)
    lab6.start_relay(userspace=False)
    wait_for("traffic after the restart", lambda: ping_ok(lab6.client), timeout=60)
    sh("ip", "-n", lab6.client, "link", "set", "vc", "down")
    sh("ip", "-n", lab6.node, "link", "set", "vn", "down")
    lab6.stop_relay()
    assert lab6.conntrack().strip() == ""
    assert not (lab6.state_dir / STATUS_FILE).exists()
