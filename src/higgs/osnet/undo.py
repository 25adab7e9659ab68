"""Undo operations: how a journal entry's undo, stored as data, is carried out.

An undo is a JSON object ``{"op": NAME, ...params}`` so that a later process (after a crash,
or ``cleanup``) can carry it out without the objects that made the change. Every operation
treats "already gone" as success, so replaying an undo twice is harmless.

Each operation's parameters are a frozen dataclass (:attr:`UndoOp.params`): a record is built
from one (:meth:`UndoOp.record`) and parsed back into one (:meth:`UndoOp.parse`, validated by
pydantic) before it runs. The JSON on disk is the dataclass's fields, flat beside ``op``, as it
always was: a key a newer version added is ignored, one an older version lacked takes its
default, and a record that cannot be parsed names the field.

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
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from higgs.osnet import procs
from higgs.osnet.errors import CommandError, OsnetError
from higgs.osnet.runner import Runner

__all__ = [
    "ARGV",
    "FILE_RESTORE",
    "INTERFACE_DELETE",
    "KILL_PID",
    "Argv",
    "BadUndoRecord",
    "FileRestore",
    "InterfaceDelete",
    "KillPid",
    "Undo",
    "UndoContext",
    "UndoOp",
    "UnknownUndoOp",
    "argv",
    "file_restore",
    "interface_delete",
    "kill_pid",
    "run_tolerant",
]

Undo = dict[str, Any]
"""An undo as the journal stores it: ``{"op": NAME, ...params}`` (JSON data only)."""


@dataclass(frozen=True)
class UndoContext:
    runner: Runner


P = TypeVar("P")


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(params: type[Any]) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(params)
    if adapter is None:  # built once per op (a race builds it twice: harmless)
        adapter = _ADAPTERS[params] = TypeAdapter(params)
    return adapter


class UnknownUndoOp(OsnetError):
    """The journal holds an undo this program does not know (a newer version wrote it?)."""


class BadUndoRecord(OsnetError):
    """A journaled undo whose parameters do not fit its operation (a damaged journal)."""


@dataclass(frozen=True)
class UndoOp(Generic[P]):
    """One kind of undo: its name in the journal, its parameters (a frozen dataclass) and how
    to carry it out. Its records are built with :meth:`record` and read with :meth:`parse`."""

    name: str
    params: type[P]
    run: Callable[[P, UndoContext], None]

    def record(self, params: P) -> Undo:
        if not isinstance(params, self.params):
            raise TypeError(f"undo {self.name} takes {self.params.__name__}, not {params!r}")
        data: dict[str, Any] = _adapter(self.params).dump_python(params, mode="json")
        return {"op": self.name, **data}

    def parse(self, record: Mapping[str, Any]) -> P:
        data = {k: v for k, v in record.items() if k != "op"}
        try:
            parsed: P = _adapter(self.params).validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "?"
            raise BadUndoRecord(
                f"undo {self.name}: field '{field}': {first['msg']} (in {dict(record)!r})"
            ) from None
        return parsed

    def apply(self, record: Mapping[str, Any], ctx: UndoContext) -> None:
        """Parses a journaled record and carries it out."""
        self.run(self.parse(record), ctx)


# --- parameters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Argv:
    argv: list[str]


@dataclass(frozen=True)
class InterfaceDelete:
    name: str
    netns: str | None = None


@dataclass(frozen=True)
class FileRestore:
    path: str
    content: str | None  # None: the file did not exist, delete it
    mode: int | None = None


@dataclass(frozen=True)
class KillPid:
    pid: int
    start_time: int
    socket: str | None = None


# --- constructors (so callers do not spell dicts by hand) ---------------------------------


def argv(command: list[str]) -> Undo:
    return ARGV.record(Argv([str(a) for a in command]))


def interface_delete(name: str, netns: str | None = None) -> Undo:
    return INTERFACE_DELETE.record(InterfaceDelete(name, netns))


def file_restore(path: Path, content: str | None, mode: int | None = None) -> Undo:
    return FILE_RESTORE.record(FileRestore(str(path), content, mode))


def kill_pid(pid: int, start_time: int, socket: Path | None = None) -> Undo:
    return KILL_PID.record(KillPid(pid, start_time, None if socket is None else str(socket)))


# --- implementations ----------------------------------------------------------------------


def run_tolerant(ctx: UndoContext, command: list[str]) -> None:
    try:
        ctx.runner.run(command)
    except CommandError as exc:
        if not exc.not_found:
            raise


def _op_argv(params: Argv, ctx: UndoContext) -> None:
    run_tolerant(ctx, list(params.argv))


def _op_interface_delete(params: InterfaceDelete, ctx: UndoContext) -> None:
    prefix = ["ip"] if params.netns is None else ["ip", "-n", params.netns]
    run_tolerant(ctx, [*prefix, "link", "delete", "dev", params.name])


def _op_file_restore(params: FileRestore, ctx: UndoContext) -> None:
    path = Path(params.path)
    content = params.content
    if content is None:
        path.unlink(missing_ok=True)
        return
    mode = params.mode
    tmp = path.with_name(f".{path.name}.higgs-restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _op_kill_pid(params: KillPid, ctx: UndoContext) -> None:
    procs.stop_process(params.pid, params.start_time)
    if params.socket:
        Path(params.socket).unlink(missing_ok=True)


ARGV = UndoOp("argv", Argv, _op_argv)
INTERFACE_DELETE = UndoOp("link_delete", InterfaceDelete, _op_interface_delete)
FILE_RESTORE = UndoOp("file_restore", FileRestore, _op_file_restore)
KILL_PID = UndoOp("kill_pid", KillPid, _op_kill_pid)
