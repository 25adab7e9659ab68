"""``higgsvpn export --name``, ``higgsvpn devices``, ``higgsvpn revoke-device`` (issue 18).

A device is a named peer of the account that lasts until it is revoked (docs/client.md,
"Devices"), for a phone or laptop running the official WireGuard app. Its key pair is made
here, in memory; the private key is written only into the exported config (never into the
state directory, never sent to the server).
"""

from __future__ import annotations

from higgs.client.export import stock_tunnel
from higgs.client.server_api import ServerApi
from higgs.client.settings import ClientSettings
from higgs.client.wgconfig import render_wg_quick
from higgs.common.keys import PrivateKey
from higgs.protocol.devices import DeviceCreated, DeviceCreateRequest, DeviceInfo, DeviceList

__all__ = ["device_config", "export_device", "format_devices", "list_devices", "revoke_device"]

_STATE_TEXT = {
    "active": "active",
    "relayed": "relayed (the node lost its direct endpoint; the app follows it through the"
    " UDP relay)",
    "node_offline": "node offline (works again when it is back)",
    "endpoint_lost": "its endpoint no longer reaches the node (the node's address or its relay"
    " host changed): export it again with --replace",
    "node_gone": "node gone for good: export it again with --replace",
    "revoked": "revoked",
}


def _api(settings: ClientSettings) -> ServerApi:
    return ServerApi(
        settings.server_url,
        settings.token,
        ca_file=settings.ca_file,
        timeout=settings.http_timeout_s,
    )


def device_config(
    key: PrivateKey, created: DeviceCreated, settings: ClientSettings, server: str
) -> str:
    """The wg-quick text of the device (pure): named in its first comment line."""
    wg, dev = created.wireguard, created.device
    cfg = stock_tunnel(key, wg, settings, dev.endpoint)
    node = created.node
    where = ", ".join(p for p in (node.country, node.region) if p)
    comment = (
        f"Higgs.net device {dev.name} ({dev.device_id}) on node {node.node_id}"
        + (f" ({where})" if where else "")
        + f"\nvalid until revoked: higgsvpn revoke-device {dev.name} (server {server})"
    )
    return render_wg_quick(cfg, comment=comment)


async def export_device(settings: ClientSettings, name: str, *, replace: bool = False) -> str:
    key = PrivateKey.generate()
    req = DeviceCreateRequest(
        name=name,
        public_key=key.public_b64(),
        node_id=settings.node_id,
        country=settings.country,
        replace=replace,
    )
    async with _api(settings) as api:
        created = await api.create_device(req)
    return device_config(key, created, settings, settings.server_url)


async def list_devices(settings: ClientSettings) -> DeviceList:
    async with _api(settings) as api:
        return await api.devices()


async def revoke_device(settings: ClientSettings, name: str) -> DeviceInfo:
    async with _api(settings) as api:
        return await api.revoke_device(name)


def format_devices(listing: DeviceList) -> str:
    if not listing.devices:
        return "(no devices: make one with `higgsvpn export --name NAME`)"
    rows = [f"{'NAME':<16} {'NODE':<20} {'PATH':<10} {'ENDPOINT':<22} STATE"]
    for d in listing.devices:
        state = _STATE_TEXT.get(d.state, d.state)
        if d.state == "revoked" and d.close_reason:
            state += f" ({d.close_reason})"
        rows.append(f"{d.name:<16} {d.node_id:<20} {d.path:<10} {d.endpoint:<22} {state}")
    return "\n".join(rows)
