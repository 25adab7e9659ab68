"""The background process that holds a connection: its pidfile, its start, its stop.

``higgsvpn connect`` starts ``higgsvpn _daemon`` in a new session (so it outlives the terminal
and ``ip netns exec``), hands it the settings on stdin (the token never appears in ``ps``), and
waits for one JSON line on its stdout: the connection is up, or it failed and why. The daemon
then points its stdout at /dev/null and logs to ``<state-dir>/daemon.log``.

The pidfile holds the PID *and* the process's start time, so a stale pidfile whose PID was
reused by another program is never mistaken for our daemon (nor signalled).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higgs.common.errors import HiggsError

__all__ = [
    "DaemonHandle",
    "ProcessError",
    "read_pidfile",
    "remove_pidfile",
    "spawn_daemon",
    "start_time_of",
    "stop_daemon",
    "write_pidfile",
]


class ProcessError(HiggsError):
    """The background process could not be started, reached or stopped."""


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


def write_pidfile(path: Path) -> DaemonHandle:
    pid = os.getpid()
    start = start_time_of(pid)
    if start is None:  # pragma: no cover - our own /proc entry always exists
        raise ProcessError("cannot read this process's start time from /proc")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid} {start}\n")
    os.replace(tmp, path)
    return DaemonHandle(pid, start)


def read_pidfile(path: Path) -> DaemonHandle | None:
    """The daemon named by the pidfile if it is still running; None otherwise."""
    try:
        pid_text, start_text = path.read_text().split()[:2]
        handle = DaemonHandle(int(pid_text), int(start_text))
    except (OSError, ValueError):
        return None
    return handle if handle.alive else None


def remove_pidfile(path: Path, handle: DaemonHandle | None = None) -> None:
    """Removes the pidfile, but only if it still names ``handle`` (when given)."""
    if handle is not None:
        try:
            current = path.read_text().split()[:2]
        except OSError:
            return
        if current != [str(handle.pid), str(handle.start_time)]:
            return
    path.unlink(missing_ok=True)


def spawn_daemon(
    config: dict[str, Any], *, log_file: Path, timeout: float, argv_extra: list[str]
) -> dict[str, Any]:
    """Starts the daemon, hands it ``config``, and returns its first JSON line.

    Raises ProcessError if it exits or stays silent past ``timeout`` (it is then stopped).
    """
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "higgs.client.cli", *argv_extra, "_daemon"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    line = _read_line(proc.stdout.fileno(), timeout)
    proc.stdout.close()
    if line is None:
        code = proc.poll()
        if code is not None:
            raise ProcessError(
                f"the background process exited (code {code}) without an answer; "
                f"see {log_file}, then run `higgsvpn cleanup`"
            )
        # SIGTERM makes it roll back whatever it had done before it exits.
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        raise ProcessError(
            f"the background process gave no answer within {timeout:.0f}s; see {log_file}"
        )
    try:
        answer = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProcessError(f"the background process answered nonsense; see {log_file}") from exc
    if not isinstance(answer, dict):
        raise ProcessError(f"the background process answered nonsense; see {log_file}")
    if not answer.get("ok"):
        # It has rolled back and is exiting; reap it so no zombie stays behind.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    return answer


def _read_line(fd: int, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    text = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
    return text or None


def stop_daemon(handle: DaemonHandle, *, timeout: float) -> bool:
    """SIGTERM, then wait for it to finish its teardown; True if it exited in time."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(handle.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not handle.alive:
            return True
        time.sleep(0.1)
    return not handle.alive
