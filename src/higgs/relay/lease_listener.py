"""A relay host told of its new leases the moment they commit (PostgreSQL ``LISTEN``).

The relay reads its sessions from the shared database once a second
(:class:`higgs.relay.runner.Reconciler`). A client's first handshake arrives a few
milliseconds after its route answer, so a port leased just after a read stayed closed for up
to a second and the handshake waited for its retry. The server's lease sends
``NOTIFY higgs_relay_leases, '<relay address>'`` in the lease's own transaction
(:func:`higgs.server.store.relay_leases.notify_leased`); this listener, one connection of its
own, kicks the reconciler when the address is this host's. It only ever shortens the wait: a
notification missed while the connection was down costs the once-a-second read, never a
session, so there is no replay to do after a reconnect.

On its own thread and event loop (the reconciler's loop runs only during each read).
SQLite has no notifications: nothing is started there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from higgs.common.backoff import Backoff
from higgs.common.retrylog import RetryLog
from higgs.server.store.relay_leases import LEASES_CHANNEL

__all__ = ["LeaseListener", "libpq_dsn"]

log = logging.getLogger(__name__)

_CHECK_S = 1.0  # how often a quiet connection is checked for having died


def libpq_dsn(url: str) -> str | None:
    """The libpq form of a PostgreSQL database URL (``postgresql+asyncpg://`` included);
    None for any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class LeaseListener:
    """Calls ``on_lease`` (from its own thread) for each committed lease on ``address``."""

    def __init__(self, dsn: str, address: str, on_lease: Callable[[], None]) -> None:
        self.dsn, self.address, self.on_lease = dsn, address, on_lease
        self.heard = 0  # notifications for this host, since start
        self.connects = 0
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="relay-lease-listener", daemon=True)
        self._log = RetryLog(log, "UDP relay: listening for new leases")
        self._listening = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def wait_listening(self, timeout_s: float) -> bool:
        """True once the first ``LISTEN`` is in place (tests; start-up never waits on it)."""
        return self._listening.wait(timeout_s)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == self.address:
            self.heard += 1
            self.on_lease()

    async def _serve(self) -> None:
        self._stop = stop = asyncio.Event()
        # A reconnect is one connection attempt: cheap enough to keep the kicks coming soon
        # after an outage (the once-a-second read covers the gap).
        backoff = Backoff(initial=1.0, maximum=5.0)
        while not stop.is_set():
            conn: Any = None
            try:
                conn = await asyncio.wait_for(asyncpg.connect(self.dsn), 10)
                await conn.add_listener(LEASES_CHANNEL, self._notified)
                self.connects += 1
                self._log.ok()
                backoff.reset()
                self._listening.set()
                # Leases committed while we were away were read by the reconciler's own
                # pass; from here on each one kicks it.
                self.on_lease()
                while not stop.is_set() and not conn.is_closed():
                    await _pause(stop, _CHECK_S)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._log.failed(exc)
            finally:
                if conn is not None and not conn.is_closed():
                    try:
                        await asyncio.wait_for(conn.close(), 5)
                    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                        conn.terminate()
            if not stop.is_set():
                await _pause(stop, backoff.next_delay())


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps ``seconds``, or less when ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
