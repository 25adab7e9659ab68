"""A relay host hears of each lease on its address the moment it commits (PostgreSQL NOTIFY,
``higgs.relay.lease_listener``): routes on the real server against a real PostgreSQL, the
listener on its own connection, including one the database cut."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from higgs.relay.lease_listener import LeaseListener, libpq_dsn
from higgs.server.store import relay_leases
from tests.integration.server.conftest import Harness, make_settings, start

RELAY, OTHER = "192.0.2.1", "192.0.2.2"


@pytest.fixture
async def srv(
    tmp_path: Path, postgres_url: str, hub_factory: tuple[list[Any], Any]
) -> AsyncIterator[Harness]:
    """The real server on a fresh PostgreSQL database (SQLite has no notifications)."""
    settings = make_settings(
        tmp_path, postgres_url, udp_relay_address=RELAY, udp_relay_ports="40000-40009"
    )
    async with start(settings, hub_factory) as harness:
        yield harness


class Kicks:
    def __init__(self) -> None:
        self.count = 0
        self.changed = threading.Condition()

    def __call__(self) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        def wait() -> bool:
            with self.changed:
                return self.changed.wait_for(lambda: self.count >= count, timeout_s)

        assert await asyncio.to_thread(wait), f"{self.count} kicks, wanted {count}"


def _listener(srv: Harness, address: str, kicks: Kicks) -> LeaseListener:
    assert srv.settings.database is not None
    dsn = libpq_dsn(srv.settings.database)
    assert dsn is not None
    listener = LeaseListener(dsn, address, kicks)
    listener.start()
    assert listener.wait_listening(10), "the listener never listened"
    return listener


def test_only_postgresql_urls_get_a_listener() -> None:
    assert libpq_dsn("postgresql+asyncpg://u:p@db:5432/higgs") == "postgresql://u:p@db:5432/higgs"
    assert libpq_dsn("postgresql://u@db/higgs") == "postgresql://u@db/higgs"
    assert libpq_dsn("sqlite+aiosqlite:////var/lib/bosonserver/higgs.db") is None


@pytest.mark.postgres
async def test_a_lease_kicks_its_relay_host_and_no_other(srv: Harness) -> None:
    ours, theirs = Kicks(), Kicks()
    listeners = [_listener(srv, RELAY, ours), _listener(srv, OTHER, theirs)]
    try:
        await ours.wait_for(1)  # the kick on (re)connect: leases made while away are read
        await srv.node(endpoint=None)
        client = await srv.client_token("alice")
        r = await srv.route(client)
        assert r.status_code == 201, r.text
        assert r.json()["udp_relay"]["endpoint"].startswith(f"{RELAY}:")
        await ours.wait_for(2)
        assert listeners[0].heard == 1
        assert listeners[1].heard == 0  # another host's listener is not woken
    finally:
        for listener in listeners:
            listener.stop()


@pytest.mark.postgres
async def test_a_rolled_back_lease_says_nothing(srv: Harness) -> None:
    kicks = Kicks()
    listener = _listener(srv, RELAY, kicks)
    try:
        assert srv.server.ctx is not None

        async with srv.server.ctx.db.engine.connect() as conn:
            await conn.begin()
            await conn.run_sync(relay_leases.notify_leased, RELAY)
            await conn.rollback()
        async with srv.server.ctx.db.begin() as conn:
            await conn.run_sync(relay_leases.notify_leased, RELAY)
        await kicks.wait_for(2)
        assert listener.heard == 1  # the committed one only
    finally:
        listener.stop()


@pytest.mark.postgres
async def test_the_listener_comes_back_after_the_database_cut_its_connection(
    srv: Harness,
) -> None:
    kicks = Kicks()
    listener = _listener(srv, RELAY, kicks)
    try:
        assert srv.settings.database is not None
        dsn = libpq_dsn(srv.settings.database)
        admin = await asyncpg.connect(dsn)
        try:
            cut = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert cut == 1
        await kicks.wait_for(2, timeout_s=30)  # reconnected (backoff 1-5 s): kicked again
        assert listener.connects == 2
        async with srv.server.ctx.db.begin() as conn:  # type: ignore[union-attr]
            await conn.run_sync(relay_leases.notify_leased, RELAY)
        await kicks.wait_for(3)
        assert listener.heard == 1
    finally:
        listener.stop()
