"""Processes we start (wireguard-go): identify them for good, find them by socket, stop them.

A PID alone is not an identity — PIDs are recycled — so we record the PID together with the
process's start time and act only when both match. A process whose PID we lost (a crash
between spawning and journaling) is found as the owner of its control socket: the socket file's
inode is looked up in the owner's ``/proc/PID/net/unix`` and its open descriptors. Nothing is
ever matched by command-line pattern alone (no ``pkill -f``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["is_running", "process_start_time", "socket_owners", "stop_process"]

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return stat[stat.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def _gone(pid: int, start: int | None) -> bool:
    # Our own child must be reaped or it stays as a zombie (and /proc/PID stays).
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    fields = _stat_fields(pid)
    if fields is None or int(fields[19]) != start:
        return True
    if fields[0] in ("Z", "X"):
        # It exited between the two checks above; reap it if it is ours.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        return True
    return False


def is_running(pid: int, start_time: int) -> bool:
    """True while the process ``(pid, start_time)`` exists and has not exited (a zombie
    waiting for a parent that is not us to reap it counts as exited)."""
    return not _gone(pid, start_time)


def stop_process(pid: int, start_time: int, grace: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds, the process ``(pid, start_time)``.

    Returns False when that process no longer exists (a recycled PID is left alone).
    """
    if _gone(pid, start_time):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if _gone(pid, start_time):
                return True
            time.sleep(0.02)
    return True


def _comm(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def socket_owners(path: Path, comm: str | None = "wireguard-go") -> list[tuple[int, int]]:
    """``(pid, start_time)`` of the processes listening on the unix socket at ``path``.

    ``/proc/PID/net/unix`` shows the sockets of that process's network namespace, so owners
    in other namespaces are found too. ``comm`` narrows the scan to processes of that name.
    """
    target = str(path)
    owners: list[tuple[int, int]] = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if comm is not None and _comm(pid) != comm:
            continue
        try:
            inodes = {
                parts[6]
                for line in (entry / "net" / "unix").read_text().splitlines()[1:]
                if len(parts := line.split()) >= 8 and parts[7] == target
            }
            if not inodes:
                continue
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            start = process_start_time(pid)
            if start is not None:
                owners.append((pid, start))
    return owners
