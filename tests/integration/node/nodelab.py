"""Helpers for running a real higgsnode inside the lab's node namespace (e2e tests)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from higgs.lab.host import Host
from higgs.lab.lab import Lab
from higgs.lab.procs import LabProcess
from higgs.node.runstate import read_status, running_pid
from higgs.osnet.hoststate import HostState, snapshot

__all__ = ["REPO", "NodeRun", "host_state", "osnet_state", "wait_until"]

REPO = Path(__file__).resolve().parents[3]
PY = sys.executable


def wait_until(what: str, cond: Any, timeout: float = 30.0, every: float = 0.2) -> Any:
    """Polls ``cond()`` until it returns something truthy; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


_VOLATILE = re.compile(r"^# (Generated|Completed) .*$", re.M)
_COUNTERS = re.compile(r" \[\d+:\d+\]")


def _iptables(text: str) -> str:
    """iptables-save without timestamps, counters, and tables that hold nothing but empty
    built-in chains with an ACCEPT policy (merely probing iptables creates those)."""
    text = _COUNTERS.sub("", _VOLATILE.sub("", text))
    kept = []
    for block in re.split(r"(?m)^(?=\*)", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        body = [ln for ln in lines[1:] if ln != "COMMIT"]
        if all(ln.startswith(":") and ln.endswith(" ACCEPT") for ln in body):
            continue
        kept.append("\n".join(lines))
    return "\n".join(kept)


def _nft(text: str) -> str:
    """``nft -j list ruleset`` as canonical JSON, without tables that hold only empty chains
    with an accept policy (iptables-nft leaves those behind; they change nothing)."""
    try:
        items = json.loads(text).get("nftables", [])
    except ValueError:
        return text
    busy: set[tuple[str, str]] = set()
    for item in items:
        for kind in ("rule", "set", "map", "element", "flowtable", "counter", "quota", "limit"):
            if kind in item:
                busy.add((item[kind]["family"], item[kind]["table"]))
        chain = item.get("chain")
        if chain and chain.get("policy", "accept") != "accept":
            busy.add((chain["family"], chain["table"]))

    def keep(item: dict[str, Any]) -> bool:
        if "metainfo" in item:
            return False
        ((kind, body),) = item.items()
        table = (body["family"], body["name"] if kind == "table" else body["table"])
        return table in busy

    kept = [i for i in items if keep(i)]
    for item in kept:
        for body in item.values():
            body.pop("handle", None)
    return json.dumps(kept, sort_keys=True, indent=1)


def osnet_state(host: Host) -> HostState:
    """osnet's own snapshot of the namespace (the project's definition of "identical")."""
    return snapshot(netns=host.ns)


def host_state(host: Host) -> dict[str, str]:
    """What a node run must leave exactly as it found it, read inside ``host``'s namespace:
    nft ruleset, iptables (nft and legacy), routes of all tables, policy rules, links,
    addresses, qdiscs and the sysctls the node touches."""

    def out(*argv: str) -> str:
        result = host.run(list(argv), check=False)
        return result.stdout if result.returncode == 0 else f"<exit {result.returncode}>"

    state = {
        "nft": _nft(out("nft", "-j", "list", "ruleset")),
        "iptables": _iptables(out("iptables-save")),
        "iptables-legacy": _iptables(out("iptables-legacy-save")),
        "routes": out("ip", "route", "show", "table", "all"),
        "rules": out("ip", "rule", "show"),
        # -o one line per link; counters and "state UNKNOWN/UP" of veths are stable here.
        "links": out("ip", "-o", "link", "show"),
        "addresses": out("ip", "-o", "address", "show"),
        "qdiscs": out("tc", "qdisc", "show"),
        "ip_forward": out("sysctl", "-n", "net.ipv4.ip_forward"),
    }
    return state


class NodeRun:
    """One higgsnode agent in the lab's node namespace, with its own state dir and names."""

    def __init__(self, lab: Lab, state_dir: Path, *, tag: str = "hn") -> None:
        self.lab = lab
        self.state_dir = state_dir
        self.interface = lab.ifname(tag)
        self.proc: LabProcess | None = None

    def cli(self, *args: str, check: bool = False, timeout: float = 60) -> Any:
        argv = [PY, "-m", "higgs.node.cli", *args, "--state-dir", str(self.state_dir)]
        argv += ["--interface", self.interface]
        return self.lab.node.run(argv, check=check, timeout=timeout)

    def start(self, *flags: str) -> LabProcess:
        argv = [
            PY, "-m", "higgs.node.cli", "start",
            "--state-dir", str(self.state_dir), "--interface", self.interface, *flags,
        ]  # fmt: skip
        self.proc = self.lab.node.popen(argv, name="higgsnode")
        return self.proc

    def status(self) -> dict[str, Any]:
        """What `higgsnode status --json` prints, read from the same files without starting
        a Python process per poll (the CLI itself is exercised by :meth:`status_cli`)."""
        pid = running_pid(self.state_dir)
        return {
            "running": pid is not None,
            "pid": pid,
            "status": read_status(self.state_dir) if pid is not None else None,
        }

    def status_cli(self) -> dict[str, Any]:
        result = self.cli("status", "--json")
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def wait_server_online(self, timeout: float = 40) -> dict[str, Any]:
        def online() -> dict[str, Any] | None:
            assert self.proc is not None
            if not self.proc.alive():
                raise AssertionError(f"higgsnode exited:\n{self.proc.log_text()[-3000:]}")
            st = self.status().get("status") or {}
            return st if (st.get("server") or {}).get("state") == "online" else None

        result: dict[str, Any] = wait_until("the node to register", online, timeout)
        return result
