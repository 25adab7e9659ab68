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
``route_delete````dst``, ``dev``, ``gateway``, ``table``,       deletes the route (netlink)
                ``metric``, ``netns``
``rule_delete`` ``priority``, ``table``, ``family``,           deletes the policy rule
                ``fwmark``, ``invert``, ``suppress_prefixlength``
``wireguard_go````name``, ``netns``, ``socket``, ``pid``,       stops wireguard-go (by PID, or
                ``start_time`` (PID may be null)               the socket's owner), deletes the
                                                               link, removes the socket
==============  =============================================  ================================

Other modules (e.g. the firewall backends) may register more with :func:`register`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higgs.osnet import procs, sysctl
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
    "register",
    "registered",
    "wireguard_go",
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


def wireguard_go(
    name: str,
    socket: Path,
    netns: str | None = None,
    pid: int | None = None,
    start_time: int | None = None,
) -> Undo:
    return {
        "op": "wireguard_go",
        "name": name,
        "socket": str(socket),
        "netns": netns,
        "pid": pid,
        "start_time": start_time,
    }


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
    key = str(params["key"])
    try:
        sysctl.write(key, str(params["value"]), runner=ctx.runner, netns=netns)
    except CommandError as exc:
        # The namespace itself is gone: its sysctls went with it.
        if not exc.not_found:
            raise
    except sysctl.SysctlError:
        # A per-interface key whose interface is gone (e.g. the uplink's accept_ra after the
        # uplink was unplugged): the setting went with the interface.
        if netns is None and not sysctl.exists(key):
            return
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


def _op_kill_pid(params: Mapping[str, Any], ctx: UndoContext) -> None:
    procs.stop_process(int(params["pid"]), int(params["start_time"]))
    sock = params.get("socket")
    if sock:
        Path(sock).unlink(missing_ok=True)


def _op_wireguard_go(params: Mapping[str, Any], ctx: UndoContext) -> None:
    """Stops the wireguard-go serving ``name``: by its recorded PID, or — when the process
    died before the PID was journaled — by the owner of its control socket."""
    sock = Path(params["socket"])
    pid, start = params.get("pid"), params.get("start_time")
    if pid is not None and start is not None:
        procs.stop_process(int(pid), int(start))
    for owner, owner_start in procs.socket_owners(sock):
        procs.stop_process(owner, owner_start)
    # wireguard-go removes its TUN device on exit; a kernel-held leftover is deleted here.
    _op_link_delete(params, ctx)
    sock.unlink(missing_ok=True)


def _op_route_delete(params: Mapping[str, Any], ctx: UndoContext) -> None:
    from higgs.osnet import routes  # routes imports the journal, which imports us

    routes.delete_route(routes.Route.from_data(params), netns=params.get("netns"))


def _op_rule_delete(params: Mapping[str, Any], ctx: UndoContext) -> None:
    from higgs.osnet import routes

    routes.delete_rule(routes.Rule.from_data(params), netns=params.get("netns"))


register("argv", _op_argv)
register("link_delete", _op_link_delete)
register("sysctl", _op_sysctl)
register("file_restore", _op_file_restore)
register("kill_pid", _op_kill_pid)
register("route_delete", _op_route_delete)
register("rule_delete", _op_rule_delete)
register("wireguard_go", _op_wireguard_go)
