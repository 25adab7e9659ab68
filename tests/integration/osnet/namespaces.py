"""Throwaway network namespaces for the OS-layer tests, named and tracked like lab runs.

Every set of namespaces takes fresh lab run names (``hgt-3fa9c1-n``, interface
``hgt-3fa9c1-w``) and registers with :mod:`higgs.lab.registry`, so the lab's machinery covers
them too: teardown on SIGINT/SIGTERM and at exit, and the session-end check in
tests/conftest.py, which fails the run if a namespace, root-namespace link, wireguard-go
socket or process carrying one of this process's run names is still there. Other engineers'
concurrent runs use other names and are never looked at.

Teardown stops every process still inside our namespaces (by PID, from ``ip netns pids`` —
the namespaces are ours, so are they), deletes the namespaces, and removes the wireguard-go
sockets and any root-namespace link named after our interfaces, also when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from higgs.lab import registry
from higgs.lab.names import RunNames, new_run_names
from higgs.osnet.names import WG_SOCKET_DIR

__all__ = ["Namespaces", "sh"]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def _kill_ns_processes(ns: str) -> None:
    # Never ourselves: a thread of ours may have joined the namespace for a netlink call.
    pids = [int(p) for p in sh("ip", "netns", "pids", ns).split() if int(p) != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)


class Namespaces:
    """Creates namespaces and remembers interface names whose sockets must go at the end."""

    def __init__(self, prefix: str = "hgt") -> None:
        self.names: RunNames = new_run_names(prefix)
        self.tag = self.names.suffix
        self.created: list[str] = []
        self.ifnames: list[str] = []
        registry.register(self)  # before anything exists, so every exit path covers it

    def new(self, label: str) -> str:
        name = self.names.ns(label)
        self.created.append(name)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        # No IPv6 duplicate address detection: its transient "tentative" addresses and late
        # local routes would make before/after snapshots differ by timing alone.
        for scope in ("all", "default"):
            sh("ip", "netns", "exec", name, "sysctl", "-q", "-w",
               f"net.ipv6.conf.{scope}.accept_dad=0")  # fmt: skip
        return name

    def ifname(self, label: str) -> str:
        """A host-wide unique interface name (wireguard-go sockets are host-wide)."""
        name = self.names.ifname(label)
        self.ifnames.append(name)
        return name

    def teardown(self) -> None:
        for ns in reversed(self.created):
            with contextlib.suppress(subprocess.CalledProcessError):
                _kill_ns_processes(ns)
                sh("ip", "netns", "delete", ns)
        self.created.clear()
        for name in self.ifnames:
            (WG_SOCKET_DIR / f"{name}.sock").unlink(missing_ok=True)
            # Meant for our namespaces; one that ended up in the root namespace goes too.
            if Path(f"/sys/class/net/{name}").exists():
                subprocess.run(["ip", "link", "delete", name], check=False, timeout=30)
        registry.forget(self)
