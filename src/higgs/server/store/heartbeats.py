"""Heartbeat UPDATEs that arrive together, written in one transaction (group commit).

Why: at 10,000 nodes one instance takes ~670 heartbeats a second, each one UPDATE of its
node's row. As a transaction of its own, each paid the connection checkout, BEGIN, COMMIT and
the greenlet hand-off around them, several times the statement itself (docs/benchmarks.md,
"Control-plane speed per instance"). Here the heartbeats that arrive within a few
milliseconds of each other share one transaction: each still runs its own statement and gets
its own row back (so "back online", 404 and 409 answers stay per node), only the transaction
around them is shared.

A failed transaction (the database went away) fails every heartbeat of its batch with the
same error, which the API answers 503, as it would have answered each alone.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from higgs.server.store import nodes as node_rows
from higgs.server.store.db import Database

__all__ = ["HeartbeatWrites"]

# How long the first heartbeat of a batch waits for others: short against the heartbeat's
# 15 s period and the 100 ms p99 target, long against the ~0.5 ms one takes to serve.
WINDOW_S = 0.004
# A bound on one transaction, so that a backlog is written in several short ones instead of
# one that holds SQLite's write lock (or PostgreSQL's row locks) for long.
MAX_BATCH = 128


@dataclass(frozen=True, slots=True)
class _Write:
    node_id: str
    now: datetime
    metrics: dict[str, Any]
    tunnel_mtu: int | None
    token_hash: str | None
    done: asyncio.Future[Any]


class HeartbeatWrites:
    """The node heartbeat's UPDATE (:func:`higgs.server.store.nodes.heartbeat`), batched."""

    def __init__(self, db: Database, *, window_s: float = WINDOW_S, max_batch: int = MAX_BATCH):
        self.db = db
        self.window_s = window_s
        self.max_batch = max_batch
        self._pending: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # transactions written (the tests read it)

    async def write(
        self,
        node_id: str,
        now: datetime,
        metrics: dict[str, Any],
        tunnel_mtu: int | None,
        token_hash: str | None,
    ) -> Any:
        """The node's row after its UPDATE (``updated_at``), None when it matched none (no
        such node, a stopped one, or — with ``token_hash`` — another node's token)."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(node_id, now, metrics, tunnel_mtu, token_hash, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="heartbeat-writes")
        return await done

    async def _flush(self) -> None:
        await asyncio.sleep(self.window_s)
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            # Rows locked in one order by every instance's batches: no deadlock between two
            # instances that each batch a node whose link moved between them.
            batch.sort(key=lambda w: w.node_id)
            try:
                rows = await self.db.run(functools.partial(_write_all, batch=batch))
                self.batches += 1
            except Exception as exc:  # every heartbeat of the batch answers it (503)
                for w in batch:
                    if not w.done.done():
                        w.done.set_exception(exc)
                continue
            for w, row in zip(batch, rows, strict=True):
                if not w.done.done():  # its request may have been cancelled meanwhile
                    w.done.set_result(row)


def _write_all(conn: Connection, *, batch: list[_Write]) -> list[Any]:
    return [
        node_rows.heartbeat(conn, w.node_id, w.now, w.metrics, w.tunnel_mtu, w.token_hash)
        for w in batch
    ]
