"""Helpers for running a real higgsnode inside the lab's node namespace (e2e tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from higgs.lab.host import Host
from higgs.lab.lab import Lab
from higgs.lab.product import NodeProgram
from higgs.lab.wait import wait_until
from higgs.node.runstate import read_status, running_pid
from higgs.osnet.hoststate import HostState, normalise, snapshot

__all__ = ["REPO", "NodeRun", "host_state", "osnet_state", "wait_until"]

REPO = Path(__file__).resolve().parents[3]


def osnet_state(host: Host) -> HostState:
    """osnet's own snapshot of the namespace (the project's definition of "identical")."""
    settle(host)
    return snapshot(netns=host.ns)


def settle(host: Host) -> None:
    """Waits until IPv6 duplicate address detection is over in ``host``: until then its
    link-local addresses are "tentative" and their local routes are still missing, which
    would make two snapshots differ by themselves."""
    wait_until(
        f"DAD to finish in {host.role}",
        lambda: not host.run(["ip", "-o", "address", "show", "tentative"]).stdout.strip(),
        15,
        0.2,
    )


def host_state(host: Host) -> dict[str, object]:
    """What a node run must leave exactly as it found it, in ``host``'s namespace: osnet's
    snapshot as it is (the whole ``nft list ruleset``, ``iptables-save`` and ``ip6tables-save``
    but for counters and timestamps; routes of all tables, policy rules, links, addresses,
    qdiscs, touched sysctls), plus the legacy iptables dumps (rules a run with the other
    flavour would have left)."""
    settle(host)

    def out(*argv: str) -> tuple[str, ...]:
        result = host.run(list(argv), check=False)
        if result.returncode != 0:
            return (f"<exit {result.returncode}>",)
        return normalise("iptables", result.stdout)

    state: dict[str, object] = dict(snapshot(netns=host.ns).sections)
    state["iptables-legacy"] = out("iptables-legacy-save")
    state["ip6tables-legacy"] = out("ip6tables-legacy-save")
    return state


class NodeRun(NodeProgram):
    """One higgsnode agent (started by higgs.lab.product) in the lab's node namespace, with
    its own state dir and names, and what these tests read of its state."""

    def __init__(self, lab: Lab, state_dir: Path, *, tag: str = "hn") -> None:
        super().__init__(lab, state_dir, lab.ifname(tag))

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
