"""Undo operations: how a journal entry's undo, stored as data, is carried out.

An undo is a JSON object ``{"op": NAME, ...params}`` so that a later process (after a crash,
or ``cleanup``) can carry it out without the objects that made the change. Every operation
treats "already gone" as success, so replaying an undo twice is harmless.

Built-in operations:

==============  =============================================  ================================
op              params                                         does
==============  =============================================  ================================
``argv``        ``argv``                                       runs the command via the funnel
``sysctl``      ``key``, ``value``, ``netns``                  writes the previous value back
``link_delete`` ``name``, ``netns``                            ``ip link delete dev NAME``
``file_restore````path``, ``content`` (None: delete), ``mode`` puts the old file back
``kill_pid``    ``pid``, ``start_time``, ``socket``            stops the process we started
                                                               (only if it is still the same
                                                               process), removes its socket
==============  =============================================  ================================

Other modules (e.g. the firewall backends) may register more with :func:`register`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higgs.osnet import sysctl
from higgs.osnet.errors import CommandError, OsnetError
from higgs.osnet.runner import Runner

__all__ = [
    "UndoContext",
    "UndoOp",
    "UnknownUndoOp",
    "apply",
    "argv",
    "file_restore",
    "kill_pid",
    "link_delete",
    "process_start_time",
    "register",
    "registered",
]

Undo = dict[str, Any]


@dataclass(frozen=True)
class UndoContext:
    runner: Runner


UndoOp = Callable[[Mapping[str, Any], UndoContext], None]

_OPS: dict[str, UndoOp] = {}


class UnknownUndoOp(OsnetError):
    """The journal holds an undo this program does not know (a newer version wrote it?)."""


def register(name: str, op: UndoOp) -> None:
    """Adds an undo operation; registering the same function twice is fine."""
    if name in _OPS and _OPS[name] is not op:
        raise ValueError(f"undo op {name!r} is already registered")
    _OPS[name] = op


def registered() -> frozenset[str]:
    return frozenset(_OPS)


def apply(undo: Mapping[str, Any], ctx: UndoContext) -> None:
    name = undo.get("op")
    op = _OPS.get(name) if isinstance(name, str) else None
    if op is None:
        raise UnknownUndoOp(f"unknown undo operation {name!r}")
    op(undo, ctx)


# --- constructors (so callers do not spell dicts by hand) ---------------------------------


def argv(command: list[str]) -> Undo:
    return {"op": "argv", "argv": list(command)}


def link_delete(name: str, netns: str | None = None) -> Undo:
    return {"op": "link_delete", "name": name, "netns": netns}


def file_restore(path: Path, content: str | None, mode: int | None = None) -> Undo:
    return {"op": "file_restore", "path": str(path), "content": content, "mode": mode}


def kill_pid(pid: int, start_time: int, socket: Path | None = None) -> Undo:
    return {
        "op": "kill_pid",
        "pid": pid,
        "start_time": start_time,
        "socket": None if socket is None else str(socket),
    }


# --- implementations ----------------------------------------------------------------------


def _run_tolerant(ctx: UndoContext, command: list[str]) -> None:
    try:
        ctx.runner.run(command)
    except CommandError as exc:
        if not exc.not_found:
            raise


def _op_argv(params: Mapping[str, Any], ctx: UndoContext) -> None:
    _run_tolerant(ctx, [str(a) for a in params["argv"]])


def _op_link_delete(params: Mapping[str, Any], ctx: UndoContext) -> None:
    netns = params.get("netns")
    prefix = ["ip"] if netns is None else ["ip", "-n", str(netns)]
    _run_tolerant(ctx, [*prefix, "link", "delete", "dev", str(params["name"])])


def _op_sysctl(params: Mapping[str, Any], ctx: UndoContext) -> None:
    netns = params.get("netns")
    try:
        sysctl.write(str(params["key"]), str(params["value"]), runner=ctx.runner, netns=netns)
    except CommandError as exc:
        # The namespace itself is gone: its sysctls went with it.
        if not exc.not_found:
            raise


def _op_file_restore(params: Mapping[str, Any], ctx: UndoContext) -> None:
    path = Path(params["path"])
    content = params.get("content")
    if content is None:
        path.unlink(missing_ok=True)
        return
    mode = params.get("mode")
    tmp = path.with_name(f".{path.name}.higgs-restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.write(fd, str(content).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat).

    Together with the PID it names one process for good: a recycled PID has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _op_kill_pid(params: Mapping[str, Any], ctx: UndoContext) -> None:
    pid = int(params["pid"])
    if process_start_time(pid) == int(params["start_time"]):
        _stop_process(pid)
    sock = params.get("socket")
    if sock:
        Path(sock).unlink(missing_ok=True)


def _stop_process(pid: int, grace: float = 5.0) -> None:
    start = process_start_time(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if _reap_or_gone(pid, start):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not _reap_or_gone(pid, start):
        time.sleep(0.05)


def _reap_or_gone(pid: int, start: int | None) -> bool:
    # Our own child must be reaped or it lingers as a zombie (and /proc/PID stays).
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    now = process_start_time(pid)
    if now is None or now != start:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return state[state.rindex(")") + 2 :].startswith("Z")


register("argv", _op_argv)
register("link_delete", _op_link_delete)
register("sysctl", _op_sysctl)
register("file_restore", _op_file_restore)
register("kill_pid", _op_kill_pid)
