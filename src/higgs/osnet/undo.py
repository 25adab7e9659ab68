"""Undo operations: how a journal entry's undo, stored as data, is carried out.

An undo is a JSON object ``{"op": NAME, ...params}`` so that a later process (after a crash,
or ``cleanup``) can carry it out without the objects that made the change. Every operation
treats "already gone" as success, so replaying an undo twice is harmless.

Each operation is an :class:`UndoOp` defined next to the change it undoes (as wg-quick pairs
``add_if`` with ``del_if``): ``sysctl`` in :mod:`~higgs.osnet.sysctl`, ``route_delete`` and
``rule_delete`` in :mod:`~higgs.osnet.routes`, ``wireguard_go`` in
:mod:`~higgs.osnet.wireguard`, ``resolver_restore`` in :mod:`~higgs.osnet.resolver`,
``firewall_remove`` in :mod:`higgs.osnet.firewall`. This module holds the type and the
operations that belong to no one change:

==============  =============================================  ================================
op              params                                         does
==============  =============================================  ================================
``argv``        ``argv``                                       runs the command via the funnel
``link_delete`` ``name``, ``netns``                            ``ip link delete dev NAME``
``file_restore````path``, ``content`` (None: delete), ``mode`` puts the old file back
``kill_pid``    ``pid``, ``start_time``, ``socket``            stops the process we started
                                                               (only if it is still the same
                                                               process), removes its socket
==============  =============================================  ================================

:mod:`higgs.osnet.undo_registry` lists every operation; the journal carries undos out through
it, so any process that can open a journal can undo anything in it, whatever else it imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higgs.osnet import procs
from higgs.osnet.errors import CommandError, OsnetError
from higgs.osnet.runner import Runner

__all__ = [
    "ARGV",
    "FILE_RESTORE",
    "KILL_PID",
    "LINK_DELETE",
    "Undo",
    "UndoContext",
    "UndoOp",
    "UnknownUndoOp",
    "argv",
    "file_restore",
    "kill_pid",
    "link_delete",
    "run_tolerant",
]

Undo = dict[str, Any]
"""An undo as the journal stores it: ``{"op": NAME, ...params}`` (JSON data only)."""


@dataclass(frozen=True)
class UndoContext:
    runner: Runner


@dataclass(frozen=True)
class UndoOp:
    """One kind of undo: its name in the journal and how to carry it out. Build its records
    with :meth:`record`, never by spelling the dict by hand."""

    name: str
    run: Callable[[Mapping[str, Any], UndoContext], None]

    def record(self, **params: Any) -> Undo:
        return {"op": self.name, **params}


class UnknownUndoOp(OsnetError):
    """The journal holds an undo this program does not know (a newer version wrote it?)."""


# --- constructors (so callers do not spell dicts by hand) ---------------------------------


def argv(command: list[str]) -> Undo:
    return ARGV.record(argv=list(command))


def link_delete(name: str, netns: str | None = None) -> Undo:
    return LINK_DELETE.record(name=name, netns=netns)


def file_restore(path: Path, content: str | None, mode: int | None = None) -> Undo:
    return FILE_RESTORE.record(path=str(path), content=content, mode=mode)


def kill_pid(pid: int, start_time: int, socket: Path | None = None) -> Undo:
    return KILL_PID.record(
        pid=pid, start_time=start_time, socket=None if socket is None else str(socket)
    )


# --- implementations ----------------------------------------------------------------------


def run_tolerant(ctx: UndoContext, command: list[str]) -> None:
    try:
        ctx.runner.run(command)
    except CommandError as exc:
        if not exc.not_found:
            raise


def _op_argv(params: Mapping[str, Any], ctx: UndoContext) -> None:
    run_tolerant(ctx, [str(a) for a in params["argv"]])


def _op_link_delete(params: Mapping[str, Any], ctx: UndoContext) -> None:
    netns = params.get("netns")
    prefix = ["ip"] if netns is None else ["ip", "-n", str(netns)]
    run_tolerant(ctx, [*prefix, "link", "delete", "dev", str(params["name"])])


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


def _op_kill_pid(params: Mapping[str, Any], ctx: UndoContext) -> None:
    procs.stop_process(int(params["pid"]), int(params["start_time"]))
    sock = params.get("socket")
    if sock:
        Path(sock).unlink(missing_ok=True)


ARGV = UndoOp("argv", _op_argv)
LINK_DELETE = UndoOp("link_delete", _op_link_delete)
FILE_RESTORE = UndoOp("file_restore", _op_file_restore)
KILL_PID = UndoOp("kill_pid", _op_kill_pid)
