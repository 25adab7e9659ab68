"""Which process runs a daemon: a pidfile holding its PID, its start time and an ``flock``.

The running daemon keeps the file open and locked for as long as it lives; the kernel drops
the lock however it ends, so a file a crash left behind is recognised (nobody holds the lock)
and two daemons cannot share one. The start time (field 22 of ``/proc/PID/stat``) is stored
too, so a PID the kernel reused for another program is never mistaken for ours, nor signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from higgs.common.errors import HiggsError

__all__ = [
    "AlreadyRunning",
    "DaemonHandle",
    "PidFile",
    "read",
    "read_unlocked",
    "start_time_of",
    "stop",
]


class AlreadyRunning(HiggsError):
    """Another live process holds the pidfile."""

    def __init__(self, path: Path, pid: str) -> None:
        super().__init__(f"{path} is held by the running process {pid}")
        self.path = path
        self.pid = pid


def start_time_of(pid: int) -> int | None:
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass(frozen=True)
class DaemonHandle:
    pid: int
    start_time: int

    @property
    def alive(self) -> bool:
        return start_time_of(self.pid) == self.start_time


class PidFile:
    """Held (locked) by the running daemon; ``with PidFile(path) as handle: ...``.

    On exit the file is removed, but only while it still names this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: DaemonHandle | None = None
        self._fd = -1

    def __enter__(self) -> DaemonHandle:
        pid = os.getpid()
        start = start_time_of(pid)
        if start is None:  # pragma: no cover - our own /proc entry always exists
            raise HiggsError("cannot read this process's start time from /proc")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").split()
            os.close(fd)
            raise AlreadyRunning(self.path, holder[0] if holder else "?") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid} {start}\n".encode(), 0)
        self._fd = fd
        self.handle = DaemonHandle(pid, start)
        return self.handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd < 0:
            return
        if self.handle is not None and read_unlocked(self.path) == self.handle:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


def read_unlocked(path: Path) -> DaemonHandle | None:
    """What the file says, without asking whether its process still holds it."""
    try:
        pid_text, start_text = path.read_text().split()[:2]
        return DaemonHandle(int(pid_text), int(start_text))
    except (OSError, ValueError):
        return None


def read(path: Path) -> DaemonHandle | None:
    """The daemon named by the pidfile if it still runs (holds the lock, same start time)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            handle = read_unlocked(path)
            return handle if handle is not None and handle.alive else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: a leftover of a crash
    finally:
        os.close(fd)


def stop(handle: DaemonHandle, *, timeout: float) -> bool:
    """SIGTERM, then wait for it to finish its teardown; True if it exited in time."""
    if not handle.alive:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(handle.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not handle.alive:
            return True
        time.sleep(0.1)
    return not handle.alive
