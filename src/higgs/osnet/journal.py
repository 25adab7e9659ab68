"""Write-ahead journal of host changes (STYLE.md practice 7).

Before a change is made, an entry saying what it is and how to undo it — as data, see
:mod:`higgs.osnet.undo`, every operation listed in :mod:`higgs.osnet.undo_registry` — is
written durably (temp file, fsync, rename, fsync of the
directory). Stop undoes the entries in reverse order; after a crash, the next start and
``cleanup`` replay whatever the journal still holds.

File format (``<state-dir>/journal.json``, mode 0600)::

    {"format": 1,
     "next_id": 4,
     "entries": [
       {"id": 1, "what": "sysctl net.ipv4.ip_forward=1 (was 0)", "time": 1764081000.5,
        "undo": {"op": "sysctl", "key": "net.ipv4.ip_forward", "value": "0", "netns": null}},
       {"id": 3, "what": "wireguard-go higgsnode", "time": 1764081001.2,
        "undo": {"op": "kill_pid", "pid": 4242, "start_time": 81234, "socket": "..."}}]}

Crash points and why they are safe:

- entry written, change not made: the undo finds nothing and "not found" counts as success;
- change made, process killed: the entry is there, the next start undoes it;
- undo done, process killed before the entry was removed: undone again, "not found" again.

One process at a time owns a journal: it holds an ``flock`` on ``journal.json.lock`` for as
long as the :class:`Journal` is open, so ``cleanup`` cannot race a running node; the kernel
drops the lock when that process dies, however it dies.

Within that process several threads may write it at once (the node's port mapper records from
the event loop while host steps run in worker threads): every change of the entries and its
save happen under one lock, so no entry is lost and no two saves share the temp file. The
lock is not held while a change or an undo is carried out (those run commands).

A transaction rolls back only what was recorded in its own context (its thread or task, and
the threads and tasks it started: ``asyncio.to_thread`` and ``create_task`` copy the context),
never what another thread recorded meanwhile — the port mapper's mapping must survive a
failed peer setup that happened to run at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from higgs.osnet import undo as undo_ops
from higgs.osnet import undo_registry
from higgs.osnet.changes import Entry
from higgs.osnet.errors import JournalError, UndoError, UndoFailure
from higgs.osnet.runner import Runner, SubprocessRunner

__all__ = ["FORMAT", "Entry", "Journal"]

log = logging.getLogger(__name__)

FORMAT = 1
T = TypeVar("T")

# The ids recorded by each transaction open in this context, innermost last. A tuple of
# lists: a context copied into a thread or task shares the lists, so its records count too.
_scopes: contextvars.ContextVar[tuple[list[int], ...]] = contextvars.ContextVar(
    "higgs_journal_scopes", default=()
)


class Journal:
    """The list of host changes that are still in effect, each with its undo.

    Use :meth:`step` (record, then apply) for each change, inside :meth:`transaction` for a
    setup that must roll back as a whole; :meth:`undo_all` on stop; :meth:`replay` at start.
    """

    def __init__(self, path: Path, *, runner: Runner | None = None) -> None:
        self.path = path
        self.runner: Runner = runner if runner is not None else SubprocessRunner()
        self._ctx = undo_ops.UndoContext(self.runner)
        self._mutex = threading.RLock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = self._lock()
        try:
            self._entries, self._next_id = self._load()
        except BaseException:
            self.close()
            raise

    # --- lifecycle ------------------------------------------------------------------------

    def _lock(self) -> int:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise JournalError(
                f"the journal {self.path} is in use by process {holder}; "
                "stop that process first (it undoes its changes on stop)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def close(self) -> None:
        """Releases the journal without undoing anything (the entries stay on disk)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- persistence ----------------------------------------------------------------------

    def _load(self) -> tuple[list[Entry], int]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return [], 1
        except OSError as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            entries = [
                Entry(int(e["id"]), str(e["what"]), dict(e["undo"]), float(e.get("time", 0)))
                for e in data["entries"]
            ]
            next_id = max([int(data.get("next_id", 1)), *(e.id + 1 for e in entries)])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise JournalError(
                f"the journal {self.path} is damaged ({exc}); run the sweep (`cleanup`) "
                f"and then remove the file"
            ) from exc
        return entries, next_id

    def _save(self) -> None:
        data = {
            "format": FORMAT,
            "next_id": self._next_id,
            "entries": [e.to_json() for e in self._entries],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, (json.dumps(data, indent=1) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise JournalError(f"cannot write the journal {self.path}: {exc.strerror}") from exc

    # --- recording ------------------------------------------------------------------------

    @property
    def entries(self) -> tuple[Entry, ...]:
        with self._mutex:
            return tuple(self._entries)

    def __len__(self) -> int:
        with self._mutex:
            return len(self._entries)

    def record(self, what: str, undo: Mapping[str, Any]) -> Entry:
        """Durably notes a change about to be made. Make the change only after this returns."""
        if self._lock_fd < 0:
            raise JournalError("the journal is closed")
        if not undo_registry.is_known(undo.get("op")):
            raise ValueError(f"unknown undo operation {undo.get('op')!r}")
        try:
            json.dumps(undo)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"an undo must be JSON data: {exc}") from exc
        with self._mutex:
            entry = Entry(self._next_id, what, dict(undo), time.time())
            self._next_id += 1
            self._entries.append(entry)
            try:
                self._save()
            except BaseException:
                self._entries.remove(entry)
                raise
        for scope in _scopes.get():
            scope.append(entry.id)
        log.debug("journal: +%d %s", entry.id, what)
        return entry

    def step(self, what: str, undo: Mapping[str, Any], apply: Callable[[], T]) -> T:
        """Records the change, then makes it. If making it fails, its undo runs at once
        (the change may be half made) and the original error propagates."""
        entry = self.record(what, undo)
        try:
            return apply()
        except BaseException as exc:
            for failure in self._undo([entry]):
                exc.add_note(f"undo of {failure.what!r} also failed: {failure.error}")
            raise

    def amend(self, entry: Entry, undo: Mapping[str, Any]) -> Entry:
        """Replaces an entry's undo once more is known (e.g. the PID of a daemon that was
        journaled before it was spawned). Same id, same place in the order."""
        new = Entry(entry.id, entry.what, dict(undo), entry.time)
        json.dumps(new.undo)
        with self._mutex:
            old = list(self._entries)
            self._entries = [new if e.id == entry.id else e for e in self._entries]
            try:
                self._save()
            except BaseException:
                self._entries = old
                raise
        return new

    def forget(self, entry: Entry) -> None:
        """Drops an entry whose change the caller has reverted by other means."""
        with self._mutex:
            self._entries = [e for e in self._entries if e.id != entry.id]
            self._save()

    # --- undoing --------------------------------------------------------------------------

    def _undo(self, entries: list[Entry]) -> list[UndoFailure]:
        """Undoes ``entries`` in reverse order; every one is attempted; the done ones are
        removed from the journal one by one."""
        failures: list[UndoFailure] = []
        for stale in reversed(entries):
            # The caller's copy may predate an amend(); the journal's own is authoritative.
            with self._mutex:
                entry = next((e for e in self._entries if e.id == stale.id), None)
            if entry is None:
                continue
            try:
                undo_registry.apply(entry.undo, self._ctx)
            except Exception as exc:  # every step runs; failures are collected
                log.warning("undo failed: %s: %s", entry.what, exc)
                failures.append(UndoFailure(entry.id, entry.what, exc))
                continue
            log.info("undone: %s", entry.what)
            with self._mutex:
                self._entries = [e for e in self._entries if e.id != entry.id]
                try:
                    self._save()
                except JournalError as exc:
                    # Harmless: the undo is replayed later and then finds nothing to do.
                    failures.append(UndoFailure(entry.id, entry.what, exc))
        return failures

    def undo(self, entry: Entry) -> None:
        """Undoes one entry now (e.g. a route that must move) and removes it."""
        failures = self._undo([entry])
        if failures:
            raise UndoError(failures)

    def undo_all(self) -> int:
        """Undoes every entry, newest first. Raises UndoError listing every failed step
        after attempting all of them; the failed entries stay for a later ``cleanup``."""
        entries = self.entries
        failures = self._undo(list(entries))
        if failures:
            raise UndoError(failures)
        return len(entries)

    replay = undo_all
    """At start (and in ``cleanup``): undo what a crashed predecessor left."""

    # --- transactions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, name: str) -> Iterator[Journal]:
        """Rolls back every change recorded inside the block if the block raises
        (STYLE.md practice 5); on success the changes stay in effect and journaled."""
        ids: list[int] = []
        token = _scopes.set((*_scopes.get(), ids))
        try:
            yield self
        except BaseException as exc:
            mine = self._recorded(ids)
            log.warning("%s failed; rolling back %d change(s)", name, len(mine))
            for failure in self._undo(mine):
                exc.add_note(f"rollback of {failure.what!r} failed: {failure.error}")
            raise
        finally:
            _scopes.reset(token)

    @contextlib.asynccontextmanager
    async def atransaction(self, name: str) -> AsyncIterator[Journal]:
        """:meth:`transaction` for ``async with`` (e.g. a setup that awaits a handshake).
        The rollback runs in a thread: undos run commands and must not stall the event loop.
        A thread cannot be cancelled, so the rollback completes even if the task is
        cancelled again meanwhile."""
        ids: list[int] = []
        token = _scopes.set((*_scopes.get(), ids))
        try:
            yield self
        except BaseException as exc:
            mine = self._recorded(ids)
            log.warning("%s failed; rolling back %d change(s)", name, len(mine))
            for failure in await asyncio.to_thread(self._undo, mine):
                exc.add_note(f"rollback of {failure.what!r} failed: {failure.error}")
            raise
        finally:
            _scopes.reset(token)

    def _recorded(self, ids: list[int]) -> list[Entry]:
        """The journal's current entries among ``ids``, in journal order."""
        wanted = set(ids)
        return [e for e in self.entries if e.id in wanted]
