"""The SQL of scale-out presence (tables ``api_instances`` and ``node_presence``).

Each instance beats (``seen_at``) and claims the nodes whose control link it holds. A claim is
the whole truth about where a node's link is: the last instance to accept the link wins (a
node keeps one link), and an instance that stops beating loses all its claims at once, without
any row being written, because :func:`holders` only returns claims of live instances. The
reconciliation of each instance re-asserts its own claims (:func:`assert_links`), so a claim
lost to a failed write comes back within one period.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, update

from higgs.server.store.db import Database
from higgs.server.store.tables import ApiInstance, NodePresence

__all__ = [
    "Holder",
    "assert_links",
    "beat",
    "claim",
    "holders",
    "live_instances",
    "release",
    "take_resyncs",
    "want_resync",
    "want_resyncs",
]


@dataclass(frozen=True, slots=True)
class Holder:
    instance_id: str
    relay_base: str


async def beat(db: Database, instance_id: str, relay_base: str, now: datetime) -> None:
    async with db.begin() as conn:
        done = await conn.execute(
            update(ApiInstance)
            .where(ApiInstance.id == instance_id)
            .values(seen_at=now, relay_base=relay_base)
        )
        if done.rowcount == 0:
            await conn.execute(
                insert(ApiInstance).values(id=instance_id, relay_base=relay_base, seen_at=now)
            )


async def claim(db: Database, node_id: str, instance_id: str, now: datetime) -> None:
    """The node's link is on ``instance_id`` from now on (whoever held it before)."""
    async with db.begin() as conn:
        await conn.execute(delete(NodePresence).where(NodePresence.node_id == node_id))
        await conn.execute(
            insert(NodePresence).values(
                node_id=node_id, instance_id=instance_id, since=now, resync=False
            )
        )


async def release(db: Database, node_id: str, instance_id: str) -> None:
    """The link closed; only this instance's claim goes (a newer one elsewhere stays)."""
    async with db.begin() as conn:
        await conn.execute(
            delete(NodePresence).where(
                NodePresence.node_id == node_id, NodePresence.instance_id == instance_id
            )
        )


async def assert_links(
    db: Database, instance_id: str, connected: Collection[str], now: datetime
) -> None:
    """Makes this instance's claims equal to the links it holds."""
    async with db.begin() as conn:
        claimed = set(
            (
                await conn.scalars(
                    select(NodePresence.node_id).where(NodePresence.instance_id == instance_id)
                )
            ).all()
        )
        stale = claimed - set(connected)
        if stale:
            await conn.execute(
                delete(NodePresence).where(
                    NodePresence.instance_id == instance_id, NodePresence.node_id.in_(stale)
                )
            )
        missing = [n for n in connected if n not in claimed]
        if missing:
            await conn.execute(delete(NodePresence).where(NodePresence.node_id.in_(missing)))
            await conn.execute(
                insert(NodePresence),
                [
                    {"node_id": n, "instance_id": instance_id, "since": now, "resync": False}
                    for n in missing
                ],
            )


async def holders(db: Database, now: datetime, dead_after_s: float) -> dict[str, Holder]:
    """node id → the live instance holding its link."""
    alive = now - timedelta(seconds=dead_after_s)
    async with db.begin() as conn:
        rows = (
            await conn.execute(
                select(NodePresence.node_id, ApiInstance.id, ApiInstance.relay_base)
                .join(ApiInstance, ApiInstance.id == NodePresence.instance_id)
                .where(ApiInstance.seen_at >= alive)
            )
        ).all()
    return {r[0]: Holder(r[1], r[2]) for r in rows}


async def live_instances(db: Database, now: datetime, dead_after_s: float) -> int:
    alive = now - timedelta(seconds=dead_after_s)
    async with db.begin() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(ApiInstance).where(ApiInstance.seen_at >= alive)
        )
    return int(count or 0)


async def want_resync(db: Database, node_id: str) -> None:
    await want_resyncs(db, [node_id])


async def want_resyncs(db: Database, node_ids: Collection[str]) -> None:
    """Flags the nodes for a ``sync`` by whichever instance holds their link."""
    async with db.begin() as conn:
        await conn.execute(
            update(NodePresence).where(NodePresence.node_id.in_(node_ids)).values(resync=True)
        )


async def take_resyncs(db: Database, instance_id: str) -> list[str]:
    """The nodes on this instance whose ``sync`` is due; their flags are cleared."""
    async with db.begin() as conn:
        due = list(
            (
                await conn.scalars(
                    select(NodePresence.node_id).where(
                        NodePresence.instance_id == instance_id, NodePresence.resync.is_(True)
                    )
                )
            ).all()
        )
        if due:
            await conn.execute(
                update(NodePresence)
                .where(NodePresence.instance_id == instance_id, NodePresence.node_id.in_(due))
                .values(resync=False)
            )
    return due
