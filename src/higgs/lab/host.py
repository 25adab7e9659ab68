"""One host of the lab: a network namespace with its addresses, and ways to act inside it."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from .netns import netns_socket, ns_argv, run, wait_tcp_port
from .plan import HostPlan, V6HostPlan
from .procs import LabProcess

__all__ = ["Host", "Spawner"]


class Spawner(Protocol):
    def spawn(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        name: str | None,
        log: Path | None,
        env: Mapping[str, str] | None,
    ) -> LabProcess: ...


class Host:
    """A lab host. ``role`` is e.g. ``"node"``, ``ns`` the namespace, ``ip`` its main address."""

    def __init__(self, role: str, ns: str, plan: HostPlan, spawner: Spawner) -> None:
        self.role = role
        self.ns = ns
        self.plan = plan
        self._spawner = spawner
        self.v6: V6HostPlan | None = None  # set by Lab(ipv6=True)

    def __repr__(self) -> str:
        return f"Host({self.role!r}, ns={self.ns!r}, ip={self.ip})"

    @property
    def name(self) -> str:
        return self.role

    @property
    def ip(self) -> str:
        """The host's primary address (the WAN address for routers)."""
        return str(self.plan.address().ip)

    @property
    def ip6(self) -> str:
        """The host's primary IPv6 address (``Lab(ipv6=True)`` only)."""
        if self.v6 is None:
            raise KeyError(f"{self.role} has no IPv6 (build the lab with ipv6=True)")
        return str(self.v6.address().ip)

    def addr6(self, ifname: str | None = None) -> str:
        """The IPv6 address on ``ifname`` (``Lab(ipv6=True)`` only)."""
        if self.v6 is None:
            raise KeyError(f"{self.role} has no IPv6 (build the lab with ipv6=True)")
        return str(self.v6.address(ifname).ip)

    def addr(self, ifname: str | None = None) -> str:
        """The address on ``ifname`` (e.g. ``"lan0"`` of a router)."""
        return str(self.plan.address(ifname).ip)

    @property
    def addresses(self) -> dict[str, str]:
        return {ifname: str(addr.ip) for ifname, addr in self.plan.addresses}

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host's namespace and wait for it (``env``: its whole
        environment, default ours)."""
        return run(ns_argv(self.ns, argv), check=check, timeout=timeout, input=input, env=env)

    def popen(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LabProcess:
        """Start a background process here; the lab stops it (by PID) at teardown."""
        return self._spawner.spawn(self, argv, name=name, log=log, env=env)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket living in this host's namespace, usable from the test process."""
        return netns_socket(self.ns, family, type)

    def wait_port(self, port: int, *, addr: str | None = None, timeout: float = 10.0) -> None:
        """Wait until TCP ``addr:port`` (default: this host's address) accepts, seen from here."""
        wait_tcp_port(self.ns, addr or self.ip, port, timeout=timeout)

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a sysctl inside this namespace only (e.g. ``net.ipv4.ip_forward``)."""
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def nft(self, script: str) -> None:
        """Apply an nftables script inside this namespace."""
        self.run(["nft", "-f", "-"], input=script)
