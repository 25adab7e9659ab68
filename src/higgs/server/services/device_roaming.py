"""A direct device moves onto a UDP relay lease when its node loses its direct endpoint
(issue 18; docs/server.md "Devices").

A device exported with its node's verified direct endpoint names that endpoint in its config;
the stock app knows nothing else. When the node loses it (its port mapping went away, its
public address changed and the mapping is no longer verified) the app's packets reach nothing.
Each round (every ``sweep_interval_s``) this service finds such devices — on an online node,
without the endpoint for ``device_roam_after_s``, with no lease yet, and with an app the node
has seen (``devices.app_endpoint``, from its ``peer_stats``) — leases each a UDP relay port
for as long as it exists and sends the node a full ``sync``: the node re-makes the device's
peer with ``relay_ip:port`` as its endpoint and a persistent keepalive, so it initiates at
once. The relay forwards those initiations to the app's last address (the lease's *starting
address*, docs/protocol.md §5.2); the app answers through the relay and WireGuard's roaming
moves it there. The device then reads ``relayed``.

The decision (:func:`roam_due`) is pure; :class:`DeviceRoaming` is its I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from higgs.server.config import ServerSettings
from higgs.server.services.clock import utcnow
from higgs.server.services.sessions import SessionService
from higgs.server.store import devices as store
from higgs.server.store.db import Database
from higgs.server.store.sessions import session_by_id
from higgs.server.store.states import NodeState, SessionState

__all__ = ["DeviceRoaming", "RoamRound", "endpoint_lost", "roam_due"]

log = logging.getLogger(__name__)


def endpoint_lost(record: store.DeviceRecord) -> bool:
    """A live direct device, with no relay lease, whose online node no longer has the direct
    endpoint its config names (none, or another one: the app cannot follow either)."""
    d = record.device
    return (
        d.path == "direct"
        and d.revoked_at is None
        and record.session_state == SessionState.OPEN
        and record.lease_port is None
        and record.node_state == NodeState.ONLINE
        and record.node_endpoint != d.endpoint
    )


def roam_due(
    records: Iterable[store.DeviceRecord],
    lost_since: Mapping[str, datetime],
    now: datetime,
    after: timedelta,
) -> tuple[list[store.DeviceRecord], dict[str, datetime]]:
    """Which devices get a relay lease now, and since when each still-lost device is lost
    (device id -> first round that saw it lost; what the next round is given). A device is
    due once it has been lost for ``after`` and its app's address is known (without it the
    relay could not reach the app: the device stays ``endpoint_lost``)."""
    due: list[store.DeviceRecord] = []
    since: dict[str, datetime] = {}
    for record in records:
        if not endpoint_lost(record):
            continue
        first = lost_since.get(record.device.id, now)
        since[record.device.id] = first
        if now - first >= after and record.device.app_endpoint:
            due.append(record)
    return due, since


@dataclass
class RoamRound:
    moved: dict[str, str] = field(default_factory=dict)  # device id -> relay endpoint
    failed: list[str] = field(default_factory=list)  # no port free (tried again next round)


class DeviceRoaming:
    def __init__(self, db: Database, sessions: SessionService, settings: ServerSettings) -> None:
        self.db, self.sessions, self.settings = db, sessions, settings
        self._lost: dict[str, datetime] = {}

    async def run_once(self) -> RoamRound:
        out = RoamRound()
        now = utcnow()
        after = timedelta(seconds=self.settings.device_roam_after_s)
        due, self._lost = roam_due(await store.records(self.db), self._lost, now, after)
        nodes: set[str] = set()
        for record in due:
            endpoint = await self._lease(record, now)
            if endpoint is None:
                out.failed.append(record.device.id)
                continue
            out.moved[record.device.id] = endpoint
            nodes.add(record.device.node_id)
            log.info(
                "direct device moved onto a UDP relay lease (its node lost the direct endpoint)",
                extra={
                    "device_id": record.device.id,
                    "node_id": record.device.node_id,
                    "relay": endpoint,
                    "app": record.device.app_endpoint,
                },
            )
        for node_id in sorted(nodes):
            await self.sessions.sync_node(node_id)  # the node re-makes the peer on the relay
        return out

    async def _lease(self, record: store.DeviceRecord, now: datetime) -> str | None:
        row = await session_by_id(self.db, record.device.session_id)
        if row is None or row.state != SessionState.OPEN:
            return None
        facts = self.sessions.nodes.get(record.device.node_id)
        udp = await self.sessions.udp_leases.lease(
            row, now, None, facts.relay_rtt_ms if facts else None
        )
        return None if udp is None else udp.endpoint
