"""How ``stop``, ``status`` and ``diagnose`` find the running agent: files in the state dir.

- ``higgsnode.pid``: the shared daemon pidfile (:mod:`higgs.daemon.pidfile`): PID, start time
  and an ``flock`` held for as long as the agent runs, so a stale file left by a crash is
  recognised and two agents cannot share a state directory.
- ``status.json`` is rewritten by the agent every few seconds (:mod:`higgs.daemon.statusfile`)
  with what ``higgsnode status`` shows.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from higgs.common.errors import HiggsError
from higgs.daemon import pidfile, statusfile

__all__ = ["PidFile", "read_status", "running_pid", "write_status"]

PID_FILE = "higgsnode.pid"
STATUS_FILE = "status.json"


class PidFile:
    """Held (locked) by the running agent; released by the kernel however the agent ends."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PID_FILE
        self._held = pidfile.PidFile(self.path)

    def __enter__(self) -> Self:
        try:
            self._held.__enter__()
        except pidfile.AlreadyRunning as exc:
            raise HiggsError(
                f"higgsnode is already running with this state directory (pid {exc.pid}); "
                f"stop it with `higgsnode stop --state-dir {self.path.parent}`"
            ) from None
        # A status file a crashed agent left is not this agent's: `status` (and whoever waits
        # for "online") must not read the dead run's state as ours.
        self._remove_status()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._held.__exit__(exc_type, exc, tb)
        self._remove_status()

    def _remove_status(self) -> None:
        with contextlib.suppress(OSError):
            (self.path.parent / STATUS_FILE).unlink()


def running_pid(state_dir: Path) -> int | None:
    """The PID of the agent running with ``state_dir``, or None when none is."""
    handle = pidfile.read(state_dir / PID_FILE)
    return None if handle is None else handle.pid


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    statusfile.write(state_dir / STATUS_FILE, {**status, "written_at": time.time()})


def read_status(state_dir: Path) -> dict[str, Any] | None:
    return statusfile.read(state_dir / STATUS_FILE)
