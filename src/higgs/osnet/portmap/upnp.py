"""UPnP-IGD port mapping through async-upnp-client (a maintained asyncio library).

Discovery asks only the gateway: one unicast SSDP M-SEARCH to ``gateway:1900`` (never the
multicast group: the node must not go looking at the owner's other devices), and the answer's
description URL must point at the gateway too.
"""

from __future__ import annotations

import ipaddress
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from higgs.osnet.portmap.types import Method, PortMapError, PortMapping

__all__ = ["DESCRIPTION", "SEARCH_S", "discover", "upnp_delete", "upnp_map"]

SSDP_PORT = 1900
SEARCH_S = 2
"""The SSDP MX: how long the gateway may take to answer (and how long we wait)."""
HTTP_TIMEOUT_S = 5
IGD_TARGETS = (
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
)
DESCRIPTION = "higgsnode"


async def discover(gateway: str) -> str:
    """The gateway's IGD description URL."""
    from async_upnp_client.search import async_search

    found: list[str] = []

    async def on_response(headers: Any) -> None:
        location = str(headers.get("location") or "")
        if location and urlsplit(location).hostname == gateway:
            found.append(location)

    for target in IGD_TARGETS:
        try:
            await async_search(
                on_response, timeout=SEARCH_S, search_target=target, target=(gateway, SSDP_PORT)
            )
        except OSError as exc:
            raise PortMapError(Method.UPNP, "no_device", f"SSDP to {gateway}: {exc}") from exc
        if found:
            return found[0]
    raise PortMapError(
        Method.UPNP, "no_device", f"no UPnP-IGD answered at {gateway}:{SSDP_PORT} in {SEARCH_S} s"
    )


async def _device(location: str) -> Any:
    from async_upnp_client.aiohttp import AiohttpRequester
    from async_upnp_client.client_factory import UpnpFactory
    from async_upnp_client.profiles.igd import IgdDevice

    requester = AiohttpRequester(timeout=HTTP_TIMEOUT_S)
    device = await UpnpFactory(requester, non_strict=True).async_create_device(location)
    return IgdDevice(device, None)


async def upnp_map(
    gateway: str, internal_ip: str, internal_port: int, lifetime_s: int, location: str = ""
) -> PortMapping:
    """Maps UDP ``internal_port`` (same external port) for ``lifetime_s``; ``location`` (a
    renewal) skips discovery."""
    from async_upnp_client.exceptions import UpnpError

    m = Method.UPNP
    try:
        location = location or await discover(gateway)
        igd = await _device(location)
        await igd.async_add_port_mapping(
            remote_host=ipaddress.IPv4Address(0),
            external_port=internal_port,
            protocol="UDP",
            internal_port=internal_port,
            internal_client=ipaddress.IPv4Address(internal_ip),
            enabled=True,
            description=DESCRIPTION,
            lease_duration=timedelta(seconds=lifetime_s),
        )
        external = await igd.async_get_external_ip_address()
    except PortMapError:
        raise
    except (TimeoutError, UpnpError, OSError) as exc:
        raise PortMapError(m, "refused", f"{type(exc).__name__}: {exc}") from exc
    if not external or ipaddress.ip_address(external).is_unspecified:
        raise PortMapError(m, "no_external_address", "the router reports no external address")
    return PortMapping(
        m, gateway, internal_ip, internal_port, str(external), internal_port, lifetime_s,
        time.monotonic(), location=location,
    )  # fmt: skip


async def upnp_delete(location: str, external_port: int) -> None:
    igd = await _device(location)
    await igd.async_delete_port_mapping(ipaddress.IPv4Address(0), external_port, "UDP")
