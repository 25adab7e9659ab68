"""Kernel parameters: read, and set returning the previous value (journaled with it).

Like netbird's ``sysctl_linux.go``: a setter returns what it found so that stop restores exactly
that (STYLE.md practice 4). Values live in ``/proc/sys``, which shows the network namespace of
the process reading it; for another namespace the value is read and written with ``sysctl``
run through the funnel under ``ip netns exec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from higgs.osnet import undo
from higgs.osnet.changes import ChangeLog
from higgs.osnet.errors import CommandError, OsnetError
from higgs.osnet.runner import Runner

__all__ = [
    "PROC_SYS",
    "UNDO",
    "SysctlError",
    "SysctlUndo",
    "exists",
    "read",
    "set",
    "undo_spec",
    "write",
]

PROC_SYS = Path("/proc/sys")


class SysctlError(OsnetError):
    """A kernel parameter cannot be read or written."""


def _path(key: str) -> Path:
    if not key or key.startswith(".") or ".." in key or "/" in key:
        raise SysctlError(f"invalid sysctl key {key!r}")
    return PROC_SYS / key.replace(".", "/")


def exists(key: str) -> bool:
    """Whether ``key`` exists in this namespace (per-interface keys vanish with the link)."""
    return _path(key).exists()


def read(key: str, *, runner: Runner | None = None, netns: str | None = None) -> str:
    """The current value of ``key`` (whitespace-normalised, e.g. ``"0"``)."""
    if netns is not None:
        if runner is None:
            raise SysctlError("reading a sysctl in another namespace needs a runner")
        out = runner.run(["ip", "netns", "exec", netns, "sysctl", "-n", key]).stdout
        return " ".join(out.split())
    try:
        return " ".join(_path(key).read_text().split())
    except OSError as exc:
        raise SysctlError(f"cannot read sysctl {key}: {exc.strerror}") from exc


def write(key: str, value: str, *, runner: Runner | None = None, netns: str | None = None) -> None:
    if netns is not None:
        if runner is None:
            raise SysctlError("writing a sysctl in another namespace needs a runner")
        runner.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"])
        return
    try:
        _path(key).write_text(value + "\n")
    except OSError as exc:
        raise SysctlError(f"cannot set sysctl {key}={value}: {exc.strerror}") from exc


@dataclass(frozen=True)
class SysctlUndo:
    key: str
    value: str  # the value found, written back
    netns: str | None = None


def undo_spec(key: str, previous: str, netns: str | None = None) -> undo.Undo:
    return UNDO.record(SysctlUndo(key, previous, netns))


def _undo(params: SysctlUndo, ctx: undo.UndoContext) -> None:
    """Writes the previous value back."""
    netns, key = params.netns, params.key
    try:
        write(key, params.value, runner=ctx.runner, netns=netns)
    except CommandError as exc:
        # The namespace itself is gone: its sysctls went with it.
        if not exc.not_found:
            raise
    except SysctlError:
        # A per-interface key whose interface is gone (e.g. the uplink's accept_ra after the
        # uplink was unplugged): the setting went with the interface.
        if netns is None and not exists(key):
            return
        raise


UNDO = undo.UndoOp("sysctl", SysctlUndo, _undo)


def set(  # shadows the builtin on purpose: callers write `sysctl.set(...)`
    journal: ChangeLog,
    key: str,
    value: str,
    *,
    runner: Runner | None = None,
    netns: str | None = None,
) -> str:
    """Sets ``key`` to ``value`` and returns the previous value.

    The previous value is journaled before the write; when the value is already right nothing
    is written and nothing journaled (there is nothing to undo).
    """
    runner = runner if runner is not None else journal.runner
    previous = read(key, runner=runner, netns=netns)
    if previous == " ".join(value.split()):
        return previous
    journal.step(
        f"sysctl {key}={value} (was {previous})",
        undo_spec(key, previous, netns),
        lambda: write(key, value, runner=runner, netns=netns),
    )
    return previous
