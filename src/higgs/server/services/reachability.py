"""Verifying a node's port mapping from outside before offering it as the direct path.

The node announces the endpoint its home router mapped (registration or heartbeat,
``port_mapping``). The server stores it with a fresh nonce and sends probe datagrams
(``higgs.protocol.reachability``) to it; a node that receives one posts the nonce back
(``POST /v1/nodes/{id}/reachability``), and only then does the mapped endpoint become the
node's ``endpoint`` (what route answers offer as the direct path). A manual endpoint
(``--endpoint``) is not probed and always wins. docs/protocol.md §2.9.

The probe goes from the server's own address, so it proves what a client needs: that a
datagram from the internet reaches the node's WireGuard port through the mapping.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
from typing import Any

from sqlalchemy import update

from higgs.protocol.api import ReachabilityResult, parse_endpoint
from higgs.protocol.reachability import NONCE_LEN, encode_probe
from higgs.server.services.clock import utcnow
from higgs.server.services.errors import Conflict, NotFound
from higgs.server.services.nodeview import NodeFacts, NodeView
from higgs.server.store.db import Database
from higgs.server.store.tables import Node

__all__ = ["PROBE_COUNT", "PROBE_EVERY_S", "ReachabilityService", "new_nonce"]

log = logging.getLogger(__name__)

PROBE_COUNT = 10
PROBE_EVERY_S = 1.0
"""A probe a second for ten seconds: a few lost datagrams do not fail the check, and a node
that comes up late (the mapping is announced before WireGuard is up) still gets one."""


def new_nonce() -> str:
    return secrets.token_hex(NONCE_LEN)


class ReachabilityService:
    def __init__(self, db: Database, nodes: NodeView) -> None:
        self.db = db
        self.nodes = nodes
        self._announced: dict[str, str | None] = {}  # node_id -> mapped endpoint seen here
        self._sources: dict[str, str] = {}  # node_id -> the address its requests came from
        self._probes: dict[str, asyncio.Task[None]] = {}
        self.sent = 0

    def registered(
        self, node_id: str, mapped: str | None, nonce: str | None, *, source: str | None = None
    ) -> None:
        """A registration stored ``mapped`` with ``nonce`` (in its own transaction)."""
        self._announced[node_id] = mapped
        if source is not None:
            self._sources[node_id] = source
        if mapped and nonce:
            self._probe(node_id, mapped, nonce)

    async def heartbeat(self, node_id: str, mapped: str | None) -> None:
        """A heartbeat reported ``mapped``: when it differs from what this instance saw,
        store it with a new nonce (and stop offering the old mapping) and probe it."""
        if self._announced.get(node_id, "?") == mapped:
            return
        nonce = new_nonce() if mapped else None
        facts = await self._withdraw(node_id, nonce, mapped_endpoint=mapped)
        if facts is not None:
            facts.mapped = mapped
        self.registered(node_id, mapped, nonce)

    async def _withdraw(self, node_id: str, nonce: str | None, **values: Any) -> NodeFacts | None:
        """Stops offering the node's mapped endpoint until ``nonce`` is proved (a manual
        endpoint stays); ``values``: more columns to write with it. Returns the node's view."""
        async with self.db.begin() as conn:
            await conn.execute(
                update(Node)
                .where(Node.id == node_id)
                .values(
                    endpoint=_keep_manual_endpoint(),
                    probe_nonce=nonce,
                    mapped_verified_at=None,
                    **values,
                )
            )
        facts = self.nodes.get(node_id)
        if facts is not None and facts.endpoint is not None and facts.endpoint == facts.mapped:
            self.nodes.set_endpoint(node_id, None)
        return facts

    async def source(self, node_id: str, address: str) -> None:
        """A heartbeat came from ``address``. From another address than before, the node's
        public address has probably changed, and the mapping it still reports (routers and
        the node's renewals may keep the old external address for a while) may lead nowhere:
        the mapped endpoint is withdrawn and probed again under a new nonce, so it is offered
        again only if it still reaches the node (a manual endpoint stays)."""
        before = self._sources.get(node_id)
        self._sources[node_id] = address
        mapped = self._announced.get(node_id)
        if before is None or before == address or not mapped:
            return
        log.info(
            "node heartbeat from a new address: verifying its port mapping again",
            extra={"node_id": node_id, "mapped": mapped},
        )
        nonce = new_nonce()
        await self._withdraw(node_id, nonce)
        self._probe(node_id, mapped, nonce)

    async def confirm(self, node_id: str, nonce: str) -> ReachabilityResult:
        async with self.db.begin() as conn:
            row = (
                await conn.execute(
                    Node.__table__.select()
                    .with_only_columns(Node.endpoint, Node.mapped_endpoint, Node.probe_nonce)
                    .where(Node.id == node_id)
                )
            ).first()
            if row is None:
                raise NotFound("node_not_found", f"node_id: no node {node_id}")
            if not row.probe_nonce or not hmac.compare_digest(row.probe_nonce, nonce):
                raise Conflict("stale_nonce", "nonce: not the nonce of this node's current probe")
            endpoint = row.endpoint or row.mapped_endpoint
            await conn.execute(
                update(Node)
                .where(Node.id == node_id)
                .values(endpoint=endpoint, mapped_verified_at=utcnow())
            )
        self.nodes.set_endpoint(node_id, endpoint)
        task = self._probes.pop(node_id, None)
        if task is not None:
            task.cancel()
        log.info("port mapping verified", extra={"node_id": node_id, "endpoint": endpoint})
        return ReachabilityResult(verified=True, endpoint=endpoint)

    def _probe(self, node_id: str, endpoint: str, nonce: str) -> None:
        old = self._probes.pop(node_id, None)
        if old is not None:
            old.cancel()
        task = asyncio.create_task(self._send(endpoint, bytes.fromhex(nonce)), name="probe")
        self._probes[node_id] = task
        task.add_done_callback(
            lambda t: self._probes.pop(node_id, None) if self._probes.get(node_id) is t else None
        )

    async def _send(self, endpoint: str, nonce: bytes) -> None:
        host, port = parse_endpoint(endpoint)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning(
                "cannot resolve a mapped endpoint", extra={"endpoint": endpoint, "why": str(exc)}
            )
            return
        family, _, _, _, addr = infos[0]
        payload = encode_probe(nonce)
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            for _ in range(PROBE_COUNT):
                try:
                    sock.sendto(payload, addr)
                    self.sent += 1
                except OSError as exc:
                    log.info("probe not sent", extra={"endpoint": endpoint, "why": str(exc)})
                await asyncio.sleep(PROBE_EVERY_S)


def _keep_manual_endpoint() -> object:
    """SQL: the endpoint stays unless it was the (old) verified mapping."""
    from sqlalchemy import case

    return case(
        (Node.endpoint == Node.mapped_endpoint, None),
        else_=Node.endpoint,
    )
