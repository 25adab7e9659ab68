"""Sessions for the UDP relay from the shared database (the relay's only use of the server's
code is its store layer). Runs on its own event loop in the relay's reconciler thread."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from higgs.relay.binding import Addr
from higgs.relay.forwarder import SessionSpec
from higgs.server.store import relay_hosts, relay_leases
from higgs.server.store.db import Database

__all__ = ["DbSource", "HostInfo"]


@dataclass(frozen=True)
class HostInfo:
    """What a relay host registers (table ``relay_hosts``)."""

    ports: str  # FIRST-LAST
    probe_port: int  # 0: no RTT probe here
    ws_url: str | None = None


def _fmt(addr: Addr | None) -> str | None:
    if addr is None:
        return None
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _addr(text: str | None) -> Addr | None:
    """An "ip:port" the relay recorded; anything else is no hint."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # "[v6]:port", as _fmt writes it
    return (host, int(port)) if host and port.isdigit() and 0 < int(port) < 65536 else None


class DbSource:
    def __init__(self, url: str, relay_address: str) -> None:
        self.relay_address = relay_address
        self._loop = asyncio.new_event_loop()
        self._db = Database(url)
        self._beaten = False

    def __call__(self) -> list[SessionSpec]:
        rows = self._loop.run_until_complete(self._fetch())
        return [
            SessionSpec(
                r.session_id,
                r.port,
                base64.b64decode(r.client_public_key),
                base64.b64decode(r.node_public_key),
                seen=(_addr(r.client_seen), _addr(r.node_seen)),
                start=_addr(r.client_start),
            )
            for r in rows
        ]

    async def _fetch(self) -> list[relay_leases.RelaySession]:
        async with self._db.begin() as conn:
            return await relay_leases.relay_sessions(conn, self.relay_address)

    def record(self, legs: dict[int, tuple[Addr | None, Addr | None]]) -> None:
        """Writes the bound legs into the leases (``bosonserver sessions``, hole punching)."""
        seen = {port: (_fmt(c), _fmt(n)) for port, (c, n) in legs.items()}
        self._loop.run_until_complete(self._record(seen))

    async def _record(self, seen: dict[int, tuple[str | None, str | None]]) -> None:
        async with self._db.begin() as conn:
            await relay_leases.record_legs(conn, self.relay_address, seen, datetime.now(UTC))

    def beat(self, info: HostInfo, stats: Mapping[str, Any]) -> None:
        """Registers (first call) and heartbeats this host with a stats snapshot."""
        first = not self._beaten
        self._loop.run_until_complete(self._beat(info, stats, datetime.now(UTC), first))
        self._beaten = True

    def goodbye(self, info: HostInfo, stats: Mapping[str, Any]) -> None:
        """A clean stop: shown as down at once, so its sessions move without waiting."""
        stopped = datetime.now(UTC) - timedelta(days=1)
        self._loop.run_until_complete(self._beat(info, {**stats, "stopped": True}, stopped, False))

    async def _beat(
        self, info: HostInfo, stats: Mapping[str, Any], now: datetime, first: bool
    ) -> None:
        async with self._db.begin() as conn:
            await relay_hosts.beat(
                conn,
                self.relay_address,
                ports=info.ports,
                probe_port=info.probe_port,
                ws_url=info.ws_url,
                stats=stats,
                now=now,
                started=first,
            )

    def close(self) -> None:
        self._loop.run_until_complete(self._db.dispose())
        self._loop.close()
