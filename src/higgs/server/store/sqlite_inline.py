"""aiosqlite's API without its worker thread, for the server's one SQLite connection.

Why: aiosqlite runs every call (execute, fetch, commit, …) in a thread and hands the result
back to the event loop. At 1,000 nodes heartbeating, those hand-offs and the GIL ping-pong
they cause cost several milliseconds per transaction (bench/profile: aiosqlite's worker and
thread conditions were the top of the profile). A statement on a local SQLite file in WAL
mode with ``synchronous=NORMAL`` takes tens of microseconds, less than one hand-off, so the
server runs it directly on the event loop instead. SQLAlchemy's ``sqlite+aiosqlite`` dialect
still drives it (``create_async_engine(..., async_creator=...)``), so nothing above the
engine changes.

The price: a statement blocks the loop while it runs. Statements here are short, readers
never wait in WAL mode, and a writer waits (``busy_timeout``) only while another process —
the operator CLI — commits its own short transaction. Deployments with heavy concurrent
writers use PostgreSQL.

This subclass overrides aiosqlite's private hand-off points (``_tx``, ``_connect``,
``_execute``, ``stop``, ``__await__``); tests/unit/server/test_sqlite_inline.py exercises them
through SQLAlchemy, so an aiosqlite release that changes them fails there first.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Generator
from typing import Any

import aiosqlite

__all__ = ["InlineConnection", "inline_creator"]


class _RunNow:
    """Stands in for aiosqlite's queue to its worker: runs each queued call at once.
    (SQLAlchemy's adapter queues some calls itself, e.g. setting the isolation level.)"""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        if future is not None and not future.done():
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """An :class:`aiosqlite.Connection` whose calls run on the calling (event loop) thread."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], iter_chunk_size: int) -> None:
        super().__init__(connector, iter_chunk_size)
        self._tx = _RunNow()  # type: ignore[assignment]

    def __await__(self) -> Generator[Any, None, InlineConnection]:
        return self._connect().__await__()

    async def _connect(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def inline_creator(path: str) -> Callable[[], InlineConnection]:
    """An ``async_creator`` for :func:`sqlalchemy.ext.asyncio.create_async_engine`."""

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(path)

    def create() -> InlineConnection:
        return InlineConnection(connector, 64)

    return create
