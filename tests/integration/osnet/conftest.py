"""Throwaway network namespaces for the OS-layer tests (our own, not the lab's).

Each test gets namespaces with unique names; teardown stops every process still inside them
(by PID, from `ip netns pids` — they are all ours, the namespace is ours), deletes them and
removes wireguard-go sockets named after our interfaces, even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from higgs.osnet.names import WG_SOCKET_DIR


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


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

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.created: list[str] = []
        self.ifnames: list[str] = []

    def new(self, label: str) -> str:
        name = f"hgt-{self.tag}-{label}"
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        # No IPv6 duplicate address detection: its transient "tentative" addresses and late
        # local routes would make before/after snapshots differ by timing alone.
        for scope in ("all", "default"):
            sh("ip", "netns", "exec", name, "sysctl", "-q", "-w",
               f"net.ipv6.conf.{scope}.accept_dad=0")  # fmt: skip
        return name

    def ifname(self, label: str) -> str:
        """A host-wide unique interface name (wireguard-go sockets are host-wide)."""
        name = f"hg{self.tag}{label}"[:15]
        self.ifnames.append(name)
        return name

    def teardown(self) -> None:
        for ns in reversed(self.created):
            with contextlib.suppress(subprocess.CalledProcessError):
                _kill_ns_processes(ns)
                sh("ip", "netns", "delete", ns)
        for name in self.ifnames:
            (WG_SOCKET_DIR / f"{name}.sock").unlink(missing_ok=True)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.teardown()


@pytest.fixture
def netns(namespaces: Namespaces) -> str:
    return namespaces.new("a")


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair between two namespaces (both ends up)."""
    sh("ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
       "netns", ns_b)  # fmt: skip
    sh("ip", "-n", ns_a, "link", "set", name_a, "up")
    sh("ip", "-n", ns_b, "link", "set", name_b, "up")


NsCmd = Callable[..., str]
