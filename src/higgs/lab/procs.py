"""Background processes of a lab run, tracked by PID and stopped by PID.

Never by name: other people's processes on this machine may share the name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LabError

__all__ = [
    "LabProcess",
    "listening_ports",
    "parse_proc_net",
    "pids_in_netns",
    "pids_mentioning",
    "start_process",
    "stop_processes",
]


@dataclass
class LabProcess:
    """One background process: its argv, PID, log file and the host it runs on."""

    name: str
    host: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 3.0) -> None:
        stop_processes([self], timeout=timeout)

    def wait_listening(self, port: int, *, proto: str = "tcp", timeout: float = 10.0) -> None:
        """Wait until this process's namespace has a socket bound to ``port``.

        Reads ``/proc/<pid>/net/{tcp,udp}``, which shows the namespace of that PID, so no
        probe connection is made (a probe would show up in the services' logs).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise LabError(
                    f"{self.name} on {self.host} exited with {self.popen.returncode} before"
                    f" listening on {proto}/{port}: {self.log_text().strip()[-1500:]}"
                )
            if port in listening_ports(self.pid, proto):
                return
            time.sleep(0.03)
        raise LabError(f"{self.name} on {self.host} is not listening on {proto}/{port}")


def start_process(
    argv: Sequence[str],
    *,
    run_argv: Sequence[str] | None = None,
    name: str,
    host: str,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> LabProcess:
    """Start ``argv`` in the background, its output appended to ``log``. ``run_argv`` is what
    is executed if it differs (``argv`` behind ``ip netns exec`` or ``taskset``); ``env``: its
    whole environment (default ours)."""
    with open(log, "ab") as log_file:
        popen = subprocess.Popen(
            list(run_argv if run_argv is not None else argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(os.environ) if env is None else dict(env),
            # Own session: a terminal's Ctrl-C reaches us, and we stop children in order.
            start_new_session=True,
        )
    return LabProcess(name=name, host=host, argv=list(argv), log=log, popen=popen)


def listening_ports(pid: int, proto: str) -> set[int]:
    """Local ports of listening TCP (or bound UDP) sockets in the namespace of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/net/{proto}").read_text()
    except OSError:
        return set()
    return parse_proc_net(text, proto)


def parse_proc_net(text: str, proto: str) -> set[int]:
    """Listening ports from the text of ``/proc/net/{tcp,udp}`` (or their ``6`` twins)."""
    if proto not in ("tcp", "udp", "tcp6", "udp6"):
        raise ValueError(f"proto must be tcp or udp (or tcp6, udp6), not {proto!r}")
    ports: set[int] = set()
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 4:
            continue
        # TCP state 0A is LISTEN; for UDP any bound socket counts (07 = unconnected).
        if proto.startswith("tcp") and cols[3] != "0A":
            continue
        ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def stop_processes(procs: Sequence[LabProcess], *, timeout: float = 3.0) -> list[str]:
    """SIGTERM all, wait together, SIGKILL the rest; returns what could not be stopped."""
    running = [p for p in procs if p.alive()]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    problems: list[str] = []
    for proc in running:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.kill()
            try:
                proc.popen.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                problems.append(f"process {proc.name} (pid {proc.pid}) survived SIGKILL")
    return problems


def pids_in_netns(ns_paths: Iterable[Path]) -> dict[int, str]:
    """PIDs of processes whose network namespace is one of ``ns_paths`` (pid -> ns name).

    Whatever runs inside a namespace of our run was started by our run, even if it escaped
    PID tracking (e.g. a daemon that forked), so teardown may stop it.
    """
    wanted: dict[str, str] = {}
    for path in ns_paths:
        try:
            wanted[f"net:[{os.stat(path).st_ino}]"] = path.name
        except OSError:
            continue
    found: dict[int, str] = {}
    if not wanted:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if link in wanted:
            found[int(entry)] = wanted[link]
    return found


def pids_mentioning(word: str) -> dict[int, str]:
    """PIDs whose command line contains ``word`` (pid -> command line); reads /proc only."""
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if word in cmdline:
            found[int(entry)] = cmdline
    return found
