"""The background process that holds a connection: its start (its pidfile, status file and
stop are the shared daemon skeleton's, :mod:`higgs.daemon`).

``higgsvpn connect`` forks itself: the child starts a new session (so it outlives the terminal
and ``ip netns exec``), closes every descriptor it inherited, and runs the daemon with the
settings already parsed; the parent waits for one JSON line on a pipe: the connection is up,
or it failed and why. The daemon then points its stdout at /dev/null and logs to
``<state-dir>/daemon.log``. A fork, not a fresh ``python -m …``: the interpreter's start and
the imports the command has already done (pydantic, httpx, the settings) would otherwise be
paid a second time, over a second on a busy machine (docs/benchmarks.md, "Time to connect").
``higgsvpn _daemon`` (settings on stdin) still runs the same daemon for a supervisor.

The pidfile (:class:`higgs.daemon.pidfile.PidFile`) holds the PID, the process's start time
and a lock, so a stale pidfile whose PID was reused by another program is never mistaken for
our daemon (nor signalled).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from higgs.common.errors import HiggsError

__all__ = ["ProcessError", "fork_daemon"]


class ProcessError(HiggsError):
    """The background process could not be started, reached or stopped."""


def fork_daemon(body: Callable[[], int], *, log_file: Path, timeout: float) -> dict[str, Any]:
    """Forks; the child runs ``body`` as the daemon and exits with its code. Returns the
    child's first JSON line.

    Call it before any thread or event loop exists (the child gets only the calling thread).
    Raises ProcessError if the child exits or stays silent past ``timeout`` (it is then
    stopped).
    """
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    read_fd, write_fd = os.pipe()
    # Nothing buffered may be written twice (by both processes).
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its behaviour is the e2e tests'
        os.close(read_fd)
        _child(body, log_fd, write_fd)
    os.close(write_fd)
    os.close(log_fd)
    started = time.monotonic()
    try:
        line = _read_line(read_fd, timeout)
    finally:
        os.close(read_fd)
    if line is None:
        # Before the timeout, it was the end of the pipe: the child is exiting (it closes the
        # pipe only then), a moment for it.
        code = _reap(pid, 5 if time.monotonic() - started < timeout else 0)
        if code is not None:
            raise ProcessError(
                f"the background process exited (code {code}) without an answer; "
                f"see {log_file}, then run `higgsvpn cleanup`"
            )
        # SIGTERM makes it roll back whatever it had done before it exits.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        _reap(pid, 30)
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
        _reap(pid, 30)
    return answer


def _child(body: Callable[[], int], log_fd: int, write_fd: int) -> None:  # pragma: no cover
    """The forked daemon: its own session, stdin /dev/null, stdout the answer pipe, stderr
    the log; none of the caller's other descriptors (a caller reading our stdout to its end,
    ``$(higgsvpn connect)``, must not wait for the daemon)."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(write_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, _max_fd())
        # Python's streams on the new 1 and 2, whatever they were before (a test's capture).
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        code = body()
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 1024


def _reap(pid: int, wait_s: float) -> int | None:
    """The child's exit code once it exited (waiting up to ``wait_s``), else None."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0  # already reaped
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


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
