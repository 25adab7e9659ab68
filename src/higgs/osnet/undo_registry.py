"""Every undo operation, in one list: what the journal can carry out.

A journal entry must be undoable by any process that opens the journal -- the one that made
the change, the next start after a crash, or a fresh ``cleanup`` -- whatever else that
process imported. So the operations are not registered as a side effect of importing the
module that uses them; they are listed here, and the journal looks them up here only.
``tests/unit/osnet/test_undo_registry.py`` fails when an :class:`~higgs.osnet.undo.UndoOp`
defined anywhere in :mod:`higgs.osnet` is missing from :data:`ALL`.

Adding one: see "Adding an undo operation" in docs/osnet.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from higgs.osnet import firewall, relaynat, resolver, routes, sysctl, undo, wireguard
from higgs.osnet.portmap import undo as portmap_undo

__all__ = ["ALL", "OPS", "apply", "is_known"]

ALL: tuple[undo.UndoOp[Any], ...] = (
    undo.ARGV,
    undo.INTERFACE_DELETE,
    undo.FILE_RESTORE,
    undo.KILL_PID,
    sysctl.UNDO,
    routes.ROUTE_DELETE,
    routes.RULE_DELETE,
    wireguard.UNDO_WIREGUARD_GO,
    resolver.UNDO,
    firewall.UNDO,
    portmap_undo.UNDO,
    relaynat.UNDO,
    relaynat.FLUSH,
)


def _by_name(ops: tuple[undo.UndoOp[Any], ...]) -> Mapping[str, undo.UndoOp[Any]]:
    table: dict[str, undo.UndoOp[Any]] = {}
    for op in ops:
        if op.name in table:
            raise ValueError(f"two undo operations are named {op.name!r}")
        table[op.name] = op
    return MappingProxyType(table)


OPS: Mapping[str, undo.UndoOp[Any]] = _by_name(ALL)


def is_known(name: object) -> bool:
    return isinstance(name, str) and name in OPS


def apply(record: Mapping[str, Any], ctx: undo.UndoContext) -> None:
    """Carries out one journaled undo (``{"op": NAME, ...params}``), parsed into its
    operation's parameters first (BadUndoRecord names the field that does not fit)."""
    name = record.get("op")
    op = OPS.get(name) if isinstance(name, str) else None
    if op is None:
        raise undo.UnknownUndoOp(f"unknown undo operation {name!r}")
    op.apply(record, ctx)
