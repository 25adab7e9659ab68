"""The background process that holds a connection: its start (its pidfile, status file and
stop are the shared daemon skeleton's, :mod:`higgs.daemon`).

``higgsvpn connect`` starts ``higgsvpn _daemon`` in a new session (so it outlives the terminal
and ``ip netns exec``), hands it the settings on stdin (the token never appears in ``ps``), and
waits for one JSON line on its stdout: the connection is up, or it failed and why. The daemon
then points its stdout at /dev/null and logs to ``<state-dir>/daemon.log``.

The pidfile (:class:`higgs.daemon.pidfile.PidFile`) holds the PID, the process's start time
and a lock, so a stale pidfile whose PID was reused by another program is never mistaken for
our daemon (nor signalled).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from higgs.common.errors import HiggsError

__all__ = ["ProcessError", "spawn_daemon"]


class ProcessError(HiggsError):
    """The background process could not be started, reached or stopped."""


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
