"""``higgsvpn export``: a route as a config for the official WireGuard apps.

The endpoint is the node's direct one when it has one, else the session's UDP relay port
(docs/protocol.md §5): a node behind a NAT works in a stock app with that config alone.

The exported config has its own key (``export.key`` in the state directory, created once), so
the phone or laptop that imports it is a device of its own to the server: asking for it never
replaces the session higgsvpn itself may be holding. A stock app does not renew the session:
it lasts the session's TTL (docs/protocol.md §4).
"""

from __future__ import annotations

from higgs.client.connect import tunnel_addresses
from higgs.client.server_api import ServerApi
from higgs.client.settings import ClientSettings
from higgs.client.wgconfig import ExportError, TunnelConfig, render_wg_quick
from higgs.common.keys import PrivateKey, load_or_create_private_key
from higgs.protocol.api import WireGuardConfig

__all__ = ["export_config", "stock_tunnel"]


def stock_tunnel(
    key: PrivateKey, wg: WireGuardConfig, settings: ClientSettings, endpoint: str
) -> TunnelConfig:
    """The tunnel a stock WireGuard app runs: the route's or device's parameters, the
    client's tunnel choice (full or split), one fixed endpoint."""
    allowed = (
        tuple(wg.allowed_ips) if settings.full_tunnel else tuple(str(p) for p in settings.split)
    )
    return TunnelConfig(
        private_key=key,
        address=tunnel_addresses(wg),
        peer_public_key=wg.node_public_key,
        allowed_ips=allowed,
        dns=tuple(wg.dns),
        mtu=wg.mtu,
        endpoint=endpoint,
        persistent_keepalive=wg.persistent_keepalive,
    )


async def export_config(settings: ClientSettings) -> str:
    key = load_or_create_private_key(settings.state_dir / "export.key")
    async with ServerApi(
        settings.server_url,
        settings.token,
        ca_file=settings.ca_file,
        timeout=settings.http_timeout_s,
    ) as api:
        route = await api.route(
            key.public_b64(), node_id=settings.node_id, country=settings.country, mode="auto"
        )
    if route.direct is not None:
        endpoint = route.direct.endpoint
    elif route.udp_relay is not None:
        endpoint = route.udp_relay.endpoint
    else:
        raise ExportError(
            f"node {route.node.node_id} is reachable only through the WebSocket relay; "
            "stock WireGuard apps cannot use it: connect with higgsvpn instead"
        )
    wg = route.wireguard
    cfg = stock_tunnel(key, wg, settings, endpoint)
    where = ", ".join(p for p in (route.node.country, route.node.region) if p)
    comment = (
        f"Higgs.net node {route.node.node_id}"
        + (f" ({where})" if where else "")
        + f"\nsession {route.session_id}, valid until {route.expires_at.isoformat()}"
    )
    return render_wg_quick(cfg, comment=comment)
