"""REST models of devices (issue 18; docs/protocol.md §2.6): named, long-lived peers of a
client account for the official WireGuard apps.

``POST /v1/devices`` takes the device's public key (the client made the key pair; the private
key goes only into the exported config) and answers what the config needs; the device then
stays a peer of its node until it is revoked. ``GET /v1/devices`` lists the account's devices
with their state, ``DELETE /v1/devices/{name}`` revokes one; the operator has the same under
``/v1/admin/devices``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from higgs.protocol.api import (
    CountryCode,
    NodeId,
    PublicKey,
    RouteNode,
    WireGuardConfig,
    _Model,
    _Request,
)

__all__ = [
    "DEVICE_ID_PATTERN",
    "DEVICE_NAME_PATTERN",
    "AdminDevice",
    "AdminDeviceList",
    "DeviceCreateRequest",
    "DeviceCreated",
    "DeviceInfo",
    "DeviceList",
    "DevicePath",
    "DeviceState",
]

DEVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
DEVICE_ID_PATTERN = r"^d_[0-9a-f]{16}$"
DeviceName = Annotated[str, StringConstraints(pattern=DEVICE_NAME_PATTERN)]

DeviceState = Literal["active", "relayed", "node_offline", "endpoint_lost", "node_gone", "revoked"]
"""``active``: the node holds the peer (or will at its next ``sync``); ``relayed``: a device
exported with its node's direct endpoint, whose node lost that endpoint: the server leased it
a UDP relay port and the app roamed there (it answered the node's handshake through the
relay), so it works as it is; ``node_offline``: the node is away for now (its restart, its
link) and the config works again when it is back; ``endpoint_lost``: the device's config names
an endpoint that no longer reaches the node: the node's direct endpoint, which the node no
longer has (its port mapping or its public address went away or changed), while the app has
not (yet) roamed onto the relay port leased then (its NAT filters the relay's packets out, or
it moved), or a relay port on a relay host that died (the lease moved to another host): the
app works only if it roamed along (WireGuard follows the node's packets when the app's NAT
lets them in), so export it again (``--replace``) for a config with the node's current
endpoint or relay port; ``node_gone``: the node left for good (or changed its tunnel subnet):
export the device again (``--replace``) for a config on another node; ``revoked``: the
device, its account or its quota ended it."""

DevicePath = Literal["direct", "udp_relay"]


class DeviceCreateRequest(_Request):
    """``POST /v1/devices`` with ``Authorization: Bearer hgc_…``."""

    name: DeviceName = Field(description="1-32 of A-Z a-z 0-9 _ . - (not starting with _.-)")
    public_key: PublicKey = Field(description="the device's WireGuard public key")
    node_id: NodeId | None = None
    country: CountryCode | None = None
    replace: bool = Field(
        default=False, description="revoke a working device of this name and make a new one"
    )


class DeviceInfo(_Model):
    device_id: str
    name: str
    state: DeviceState
    node_id: str
    public_key: str
    address: str
    endpoint: str = Field(description="the endpoint the exported config names")
    path: DevicePath
    created_at: datetime
    revoked_at: datetime | None = None
    close_reason: str | None = Field(default=None, description="why a revoked device ended")
    rx_bytes: int = Field(default=0, description="from the device, counted by this server run")
    tx_bytes: int = Field(default=0, description="to the device, counted by this server run")


class DeviceCreated(_Model):
    """Everything the exported config needs except the device's private key."""

    device: DeviceInfo
    node: RouteNode
    wireguard: WireGuardConfig


class DeviceList(_Model):
    devices: list[DeviceInfo]


class AdminDevice(DeviceInfo):
    client: str


class AdminDeviceList(_Model):
    devices: list[AdminDevice]
