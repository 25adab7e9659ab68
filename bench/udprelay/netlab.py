"""Three namespaces for the relay microbenchmark, torn down on every exit path:

    client 10.0.1.2 ─ vc|rc ─ relay (a router; relay address 10.0.9.1) ─ rn|vn ─ node 10.0.2.2

Datagrams that reach the node are dropped by an nft netdev ingress chain, which also counts
them: nothing in the node answers, so no ICMP comes back and the count is what arrived.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from higgs.lab import registry
from higgs.lab.names import RunNames, new_run_names

__all__ = ["CLIENT", "NODE", "RELAY_IP", "NetLab"]

CLIENT, NODE, RELAY_IP = "10.0.1.2", "10.0.2.2", "10.0.9.1"
_ROOT = Path(__file__).resolve().parent.parent.parent


def sh(*argv: str, input: str | None = None) -> str:
    return subprocess.run(
        argv, check=True, capture_output=True, text=True, timeout=60, input=input
    ).stdout


class NetLab:
    def __init__(self) -> None:
        self.names: RunNames = new_run_names("hgb")
        self.created: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        registry.register(self)
        self.client, self.relay, self.node = (self._ns(x) for x in ("c", "r", "n"))
        c, r, n = self.client, self.relay, self.node
        # One `ip -batch` per namespace for the links, addresses and routes: each process
        # start costs a good fraction of a second on a loaded machine.
        batches = {
            "": [f"link add vc netns {c} type veth peer name rc netns {r}",
                 f"link add vn netns {n} type veth peer name rn netns {r}"],
            c: ["link set lo up", "link set vc up", f"addr add {CLIENT}/24 dev vc",
                "route add default via 10.0.1.1"],
            n: ["link set lo up", "link set vn up", f"addr add {NODE}/24 dev vn",
                "route add default via 10.0.2.1"],
            r: ["link set lo up", "link set rc up", "link set rn up",
                "addr add 10.0.1.1/24 dev rc", "addr add 10.0.2.1/24 dev rn",
                f"addr add {RELAY_IP}/32 dev lo"],
        }  # fmt: skip
        for ns, lines in batches.items():
            sh("ip", *(["-n", ns] if ns else []), "-batch", "-", input="\n".join(lines) + "\n")
        sh("ip", "netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self.drop_at(self.node, "vn")

    def _ns(self, role: str) -> str:
        name = self.names.ns(role)
        sh("ip", "netns", "add", name)
        self.created.append(name)
        return name

    def drop_at(self, ns: str, dev: str) -> None:
        """Every UDP datagram arriving on ``dev`` is counted and dropped before the stack sees
        it (an nft netdev ingress chain: this kernel has no tc actions). ARP still passes."""
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=(
            f"table netdev sink_{dev} {{\n  counter seen {{ }}\n"
            f"  chain in {{ type filter hook ingress device {dev} priority -500; policy accept;"
            " ip protocol udp counter name seen drop; }\n}\n"))  # fmt: skip

    def undrop(self, ns: str, dev: str) -> None:
        sh("ip", "netns", "exec", ns, "nft", "delete", "table", "netdev", f"sink_{dev}")

    def dropped(self, ns: str, dev: str) -> int:
        """Datagrams the drop chain on ``dev`` has taken so far."""
        out = sh("ip", "netns", "exec", ns, "nft", "list", "counter", "netdev", f"sink_{dev}",
                 "seen")  # fmt: skip
        found = re.search(r"packets (\d+)", out)
        return int(found.group(1)) if found else 0

    def agent(self, ns: str, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": f"{_ROOT}{os.pathsep}{_ROOT / 'src'}"}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.udprelay.agent", *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=_ROOT,
        )
        self.procs.append(proc)
        return proc

    def run_agent(self, ns: str, *args: str, timeout: float = 120) -> dict[str, float]:
        proc = self.agent(ns, *args)
        out, _ = proc.communicate(timeout=timeout)
        lines = [x for x in out.splitlines() if x.strip()]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"agent {args[0]} exited {proc.returncode}")
        return dict(json.loads(lines[-1]))

    def teardown(self) -> None:
        for proc in self.procs:  # ours, by PID
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        for ns in reversed(self.created):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  check=False).stdout.split()  # fmt: skip
            for pid in pids:
                if int(pid) != os.getpid():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.05)
            subprocess.run(["ip", "netns", "delete", ns], check=False, timeout=30)
        self.created.clear()
        registry.forget(self)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()
