"""What a module that changes the host needs of the journal: :class:`Entry` and
:class:`ChangeLog`.

The modules that define undo operations (routes, wireguard, sysctl, resolver, firewall) are
imported by the registry of every operation (:mod:`higgs.osnet.undo_registry`), which the
journal imports to carry undos out. So those modules type their journal parameter with this
protocol, never with :class:`higgs.osnet.journal.Journal` itself: that would close an import
circle (journal → registry → routes → journal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from higgs.osnet.runner import Runner

__all__ = ["ChangeLog", "Entry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    id: int
    what: str
    undo: Mapping[str, Any]
    time: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "what": self.what, "undo": dict(self.undo), "time": self.time}


class ChangeLog(Protocol):
    """The write-ahead journal as the changes see it (implemented by ``journal.Journal``)."""

    @property
    def path(self) -> Path: ...

    @property
    def runner(self) -> Runner: ...

    def record(self, what: str, undo: Mapping[str, Any]) -> Entry: ...

    def step(self, what: str, undo: Mapping[str, Any], apply: Callable[[], T]) -> T: ...

    def amend(self, entry: Entry, undo: Mapping[str, Any]) -> Entry: ...

    def forget(self, entry: Entry) -> None: ...

    def undo(self, entry: Entry) -> None: ...

    def transaction(self, name: str) -> AbstractContextManager[ChangeLog]: ...

    def atransaction(self, name: str) -> AbstractAsyncContextManager[ChangeLog]: ...
