"""Devices (issue 18): named, long-lived peers of a client account for the official
WireGuard apps.

A device is one session row that never expires (:mod:`higgs.server.services.sessions` skips
device sessions in its sweep and in a node's deregistration) plus a ``devices`` row naming it.
So everything built for sessions holds for devices with no code of its own: the node gets the
peer in ``peer_add`` and in every ``sync`` after its own, the server's or its link's restart;
the UDP relay forwards the session's leased port for as long as the session is open (the
relay reads the open sessions from the database at its start); the nodes' per-peer counters
are the account's usage, and its quota closes the session; revoking the account closes it.
Revoking the device closes the session: the node gets ``peer_remove`` at once.

The exported endpoint is the node's verified direct one when it has one (no relay port is
leased then), else a UDP relay port leased to the session. A node without either cannot take
a device: the stock app cannot use the WebSocket relay.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from higgs.protocol.api import RouteMode, RouteRequest
from higgs.protocol.devices import (
    AdminDevice,
    AdminDeviceList,
    DeviceCreated,
    DeviceCreateRequest,
    DeviceInfo,
    DeviceList,
    DeviceState,
)
from higgs.server.config import ServerSettings
from higgs.server.services.answers import route_answer
from higgs.server.services.clock import utcnow
from higgs.server.services.errors import Conflict, NotFound, Unavailable
from higgs.server.services.identity import AuthedClient
from higgs.server.services.nodeview import NodeFacts
from higgs.server.services.relay_leases import endpoint_of
from higgs.server.services.sessions import SessionService
from higgs.server.store import devices as store
from higgs.server.store.db import Database
from higgs.server.store.states import NodeState, SessionState
from higgs.server.store.tables import Device
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "REVOKED_REASON",
    "DeviceService",
    "admin_devices",
    "device_info",
    "device_state",
    "limit_reached",
    "new_device_id",
]

log = logging.getLogger(__name__)

REVOKED_REASON = "device_revoked"
REPLACED_REASON = "device_replaced"


def new_device_id() -> str:
    return "d_" + secrets.token_hex(8)


def device_state(record: store.DeviceRecord, now: datetime, gone_after: timedelta) -> DeviceState:
    """What the device is now, from its session and its node (pure).

        Gone for good: the node's row is gone, it has been away (stopped or offline) for longer
        than ``gone_after``, or it came back with a tunnel subnet that no longer holds the
        device's address (its peer would be refused). Relayed: a direct device whose node lost
        its direct endpoint, on the relay lease it got then (the app roamed there); active again
    once the node steered the app off that relay onto a direct path. Endpoint lost:
        the endpoint in the device's config no longer reaches the node: a direct device's is no
        longer the node's verified one (and its app has not roamed onto a relay lease), or a
        relayed device's lease moved to another relay host (its old host died)."""
    if record.device.revoked_at is not None or record.session_state != SessionState.OPEN:
        return "revoked"
    if record.node_state is None or record.node_subnet is None:
        return "node_gone"
    address = ipaddress.ip_interface(record.address).ip
    if address not in ipaddress.ip_network(record.node_subnet, strict=False):
        return "node_gone"
    if record.node_state == NodeState.ONLINE:
        if record.device.path == "direct" and record.lease_port is not None:
            # Its node lost the direct endpoint and the device got a relay lease: relayed
            # once the app answered the node through the relay (the client leg bound), and
            # active again once the node steered it onto a direct path (its new address).
            if record.lease_direct:
                return "active"
            return "relayed" if record.lease_client_seen else "endpoint_lost"
        if record.device.path == "direct" and record.node_endpoint != record.device.endpoint:
            return "endpoint_lost"
        if record.device.path == "udp_relay" and _lease_endpoint(record) != record.device.endpoint:
            return "endpoint_lost"
        return "active"
    since = record.node_updated_at
    if since is not None and now - since > gone_after:
        return "node_gone"
    return "node_offline"


def _lease_endpoint(record: store.DeviceRecord) -> str | None:
    if record.lease_address is None or record.lease_port is None:
        return None
    return endpoint_of(record.lease_address, record.lease_port)


def limit_reached(live: int, limit: int) -> bool:
    return live >= limit


class DeviceService:
    def __init__(
        self,
        db: Database,
        sessions: SessionService,
        settings: ServerSettings,
        session_bytes: Callable[[], dict[str, tuple[int, int]]] = dict,
    ) -> None:
        self.db = db
        self.sessions = sessions
        self.settings = settings
        # session id -> (rx, tx) counted by this process (the usage service's table)
        self._session_bytes = session_bytes

    @property
    def gone_after(self) -> timedelta:
        return timedelta(seconds=self.settings.device_node_gone_s)

    def info(self, record: store.DeviceRecord, now: datetime | None = None) -> DeviceInfo:
        return device_info(record, now or utcnow(), self.gone_after, self._session_bytes())

    # --- creating ---------------------------------------------------------------------------

    async def create(self, client: AuthedClient, req: DeviceCreateRequest) -> DeviceCreated:
        existing = await store.by_name(self.db, client.id, req.name)
        if existing is not None:
            state = device_state(existing, utcnow(), self.gone_after)
            if state in ("active", "relayed", "node_offline") and not req.replace:
                raise Conflict(
                    "device_exists",
                    f"name: device {req.name!r} exists and works ({state}); revoke it first "
                    "(higgsvpn revoke-device) or ask with replace=true (higgsvpn export --replace)",
                )
            await self._revoke(existing, REPLACED_REASON)
        live = await store.count_live(self.db, client.id)
        if limit_reached(live, self.settings.max_devices_per_client):
            raise Conflict(
                "device_limit",
                f"name: the account holds {live} device(s), the most this server allows "
                f"({self.settings.max_devices_per_client}); revoke one first",
            )
        leases = self.sessions.udp_leases
        # Without a UDP relay only a node with a direct endpoint can serve a stock app.
        mode: RouteMode = "auto" if leases.address is not None else "direct"
        route = RouteRequest(
            client_public_key=req.public_key, node_id=req.node_id, country=req.country, mode=mode
        )
        opened = await self.sessions.opener.open(client, route)
        if opened.replaced is not None:
            await self.sessions.announce_closed([opened.replaced], "replaced")
        row, facts = opened.row, opened.facts
        udp_relay = None
        if facts.endpoint is not None:
            endpoint, relay_endpoint = facts.endpoint, None
        else:
            udp_relay = await leases.lease(row, row.created_at, None, facts.relay_rtt_ms)
            if udp_relay is None:
                await self._drop(row, facts, client)
                raise Unavailable(
                    "no_stable_endpoint",
                    f"node_id: node {facts.node_id} has no verified direct endpoint and no UDP "
                    "relay port is free; try another node (--node) or later",
                )
            endpoint = relay_endpoint = udp_relay.endpoint
        device = Device(
            id=new_device_id(),
            client_id=client.id,
            name=req.name,
            public_key=req.public_key,
            session_id=row.id,
            node_id=facts.node_id,
            endpoint=endpoint,
            path="direct" if udp_relay is None else "udp_relay",
            created_at=row.created_at,
            revoked_at=None,
        )
        try:
            async with self.db.begin() as conn:
                await store.insert(conn, device)
        except IntegrityError:
            await self._drop(row, facts, client)
            raise Conflict(
                "device_exists", f"name: device {req.name!r} was just created by another request"
            ) from None
        await self.sessions.announce_opened(row, facts, client, relay_endpoint)
        log.info(
            "device created",
            extra={"device_id": device.id, "node_id": facts.node_id, "client": client.name},
        )
        answer = route_answer(
            row,
            facts,
            opened.token,
            ttl_s=self.settings.session_ttl_s,
            relay_base=self.sessions.relay_base,
            udp_relay=udp_relay,
        )
        record = await store.by_id(self.db, device.id)
        assert record is not None
        return DeviceCreated(device=self.info(record), node=answer.node, wireguard=answer.wireguard)

    async def _drop(self, row: SessionRow, facts: NodeFacts, client: AuthedClient) -> None:
        """A session opened for a device that could not be made: closed again, through the
        same hook points as any session (so the node view's counts stay right)."""
        await self.sessions.announce_opened(row, facts, client)
        await self.sessions.close_where("device_failed", SessionRow.id == row.id)

    # --- reading ----------------------------------------------------------------------------

    async def list(self, client: AuthedClient) -> DeviceList:
        now = utcnow()
        return DeviceList(
            devices=[self.info(r, now) for r in await store.records(self.db, client.id)]
        )

    async def list_admin(self, with_revoked: bool = False) -> AdminDeviceList:
        return await admin_devices(self.db, self.gone_after, with_revoked, self._session_bytes())

    # --- revoking ---------------------------------------------------------------------------

    async def revoke(self, client: AuthedClient, name: str) -> DeviceInfo:
        record = await store.by_name(self.db, client.id, name)
        if record is None:
            raise NotFound("device_not_found", f"name: no device {name!r} on this account")
        await self._revoke(record, REVOKED_REASON)
        return await self._info_by_id(record.device.id)

    async def revoke_admin(self, device_id: str) -> AdminDevice:
        record = await store.by_id(self.db, device_id)
        if record is None:
            raise NotFound("device_not_found", f"device_id: no device {device_id}")
        await self._revoke(record, REVOKED_REASON)
        after = await store.by_id(self.db, device_id)
        assert after is not None
        return AdminDevice(**self.info(after).model_dump(), client=after.client)

    async def _revoke(self, record: store.DeviceRecord, reason: str) -> None:
        """Marks it revoked, then closes its session (the node gets ``peer_remove`` now)."""
        await store.mark_revoked(self.db, record.device.id, utcnow())
        await self.sessions.close_where(reason, SessionRow.id == record.device.session_id)
        log.info("device revoked", extra={"device_id": record.device.id, "reason": reason})

    async def _info_by_id(self, device_id: str) -> DeviceInfo:
        record = await store.by_id(self.db, device_id)
        assert record is not None
        return self.info(record)


def device_info(
    record: store.DeviceRecord,
    now: datetime,
    gone_after: timedelta,
    session_bytes: dict[str, tuple[int, int]],
) -> DeviceInfo:
    d = record.device
    rx, tx = session_bytes.get(d.session_id, (0, 0))
    return DeviceInfo(
        device_id=d.id,
        name=d.name,
        state=device_state(record, now, gone_after),
        node_id=d.node_id,
        public_key=d.public_key,
        address=record.address,
        endpoint=d.endpoint,
        path="udp_relay" if d.path == "udp_relay" else "direct",
        created_at=d.created_at,
        revoked_at=d.revoked_at,
        close_reason=None if record.session_state == SessionState.OPEN else record.close_reason,
        rx_bytes=rx,
        tx_bytes=tx,
    )


async def admin_devices(
    db: Database,
    gone_after: timedelta,
    with_revoked: bool = False,
    session_bytes: dict[str, tuple[int, int]] | None = None,
) -> AdminDeviceList:
    """Every device with its account's name (the admin API and ``bosonserver device list``)."""
    now = utcnow()
    counted = session_bytes or {}
    return AdminDeviceList(
        devices=[
            AdminDevice(**device_info(r, now, gone_after, counted).model_dump(), client=r.client)
            for r in await store.records(db, with_revoked=with_revoked)
        ]
    )
