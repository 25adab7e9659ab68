"""How ``stop``, ``status`` and ``diagnose`` find the running agent: files in the state dir.

- ``higgsnode.pid`` holds the agent's PID and an ``flock`` for as long as the agent runs, so a
  stale file left by a crash is recognised (nobody holds the lock) and two agents cannot share
  a state directory.
- ``status.json`` is rewritten by the agent every few seconds (atomically) with what
  ``higgsnode status`` shows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from higgs.common.errors import HiggsError

__all__ = ["PidFile", "read_status", "running_pid", "write_status"]

PID_FILE = "higgsnode.pid"
STATUS_FILE = "status.json"


class PidFile:
    """Held (locked) by the running agent; released by the kernel however the agent ends."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PID_FILE
        self._fd = -1

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise HiggsError(
                f"higgsnode is already running with this state directory (pid {holder}); "
                f"stop it with `higgsnode stop --state-dir {self.path.parent}`"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        # A status file a crashed agent left is not this agent's: `status` (and whoever waits
        # for "online") must not read the dead run's state as ours.
        with contextlib.suppress(OSError):
            (self.path.parent / STATUS_FILE).unlink()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            (self.path.parent / STATUS_FILE).unlink()


def running_pid(state_dir: Path) -> int | None:
    """The PID of the agent running with ``state_dir``, or None when none is."""
    path = state_dir / PID_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: a leftover of a crashed agent
    finally:
        os.close(fd)


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    path = state_dir / STATUS_FILE
    tmp = path.with_name(path.name + ".tmp")
    data = {**status, "written_at": time.time()}
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
