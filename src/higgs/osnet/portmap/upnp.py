"""UPnP-IGD port mapping through async-upnp-client (a maintained asyncio library).

Discovery asks only the gateway: one unicast SSDP M-SEARCH to ``gateway:1900`` (never the
multicast group: the node must not go looking at the owner's other devices), and the answer's
description URL must point at the gateway too.

IPv6 has no NAT but a firewall: an IGDv2 router's WANIPv6FirewallControl service opens an
inbound *pinhole* to our address and port (``AddPinhole``; ``UpdatePinhole`` renews it by its
UniqueID, ``DeletePinhole`` closes it). Asked over IPv6, from the address the pinhole is for:
a router in secure mode (miniupnpd's default) refuses a pinhole for another address than the
control point's own. An ``AddPinhole`` with the same parameters as a live pinhole returns the
live one's UniqueID (miniupnpd), which is how the journal's undo finds it when the run was
killed before it learned the id.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from higgs.osnet.portmap.types import Method, PortMapError, PortMapping

__all__ = [
    "DESCRIPTION",
    "SEARCH_S",
    "discover",
    "upnp_delete",
    "upnp_map",
    "upnp_pinhole",
    "upnp_pinhole_delete",
]

SSDP_PORT = 1900
SEARCH_S = 2
"""The SSDP MX: the gateway delays its answer by a random time up to this (miniupnpd does)."""
SEARCH_SLACK_S = 1.0
"""Listened on past MX: an answer sent at MX must still be heard on a busy host."""
HTTP_TIMEOUT_S = 5
IGD_TARGETS = (
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
)
PINHOLE_SERVICE = "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1"
UDP_PROTOCOL = 17  # the IANA protocol number AddPinhole takes
ANY_REMOTE = ""  # AddPinhole's wildcard for RemoteHost (IGDv2 WANIPv6FirewallControl §2.5.1)
MAX_PINHOLE_LEASE_S = 86400  # LeaseTime's allowed range is 1..86400
DESCRIPTION = "higgsnode"


async def discover(gateway: str, interface: str = "") -> str:
    """The gateway's IGD description URL; ``interface``: the uplink an IPv6 gateway is on
    (the search socket needs its scope, even for a global address)."""
    from async_upnp_client.search import SsdpSearchListener

    found: list[str] = []
    answered = asyncio.Event()
    host, _, scope = gateway.partition("%")

    # A link-local IPv6 gateway (the usual default route from router advertisements) points
    # at its service on one of its other addresses: accepted when the answer came from it.
    link_local = ":" in host and ipaddress.IPv6Address(host).is_link_local

    async def on_response(headers: Any) -> None:
        location = str(headers.get("location") or "")
        at = (urlsplit(location).hostname or "").partition("%")[0]
        sender = str(headers.get("_host") or "").partition("%")[0]
        if location and (at == host or (link_local and sender == host and ":" in at)):
            found.append(location)
            answered.set()

    target: Any = (gateway, SSDP_PORT)
    if ":" in host:  # IPv6: a 4-tuple for the socket, the scope of a link-local gateway
        name = scope or interface
        target = (host, SSDP_PORT, 0, socket.if_nametoindex(name) if name else 0)
    for search_target in IGD_TARGETS:
        if ":" in host:
            await _search_v6(target, search_target, on_response, answered)
            if found:
                return found[0]
            continue
        try:
            # async_search would stop listening at MX itself; this listens SEARCH_SLACK_S on.
            listener = SsdpSearchListener(
                async_callback=on_response,
                target=target,
                timeout=SEARCH_S,
                search_target=search_target,
            )
            await listener.async_start()
            try:
                listener.async_search()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), SEARCH_S + SEARCH_SLACK_S)
            finally:
                listener.async_stop()
        except OSError as exc:
            raise PortMapError(Method.UPNP, "no_device", f"SSDP to {gateway}: {exc}") from exc
        if found:
            return found[0]
    raise PortMapError(
        Method.UPNP,
        "no_device",
        f"no UPnP-IGD answered at {gateway}:{SSDP_PORT} in {SEARCH_S + SEARCH_SLACK_S:g} s",
    )


async def _search_v6(
    target: tuple[str, int, int, int],
    search_target: str,
    on_response: Callable[[Any], Coroutine[Any, Any, None]],
    answered: asyncio.Event,
) -> None:
    """One unicast M-SEARCH over IPv6 on a socket of our own: async-upnp-client's listener
    drops every answer from a global address (it compares the sender with the target
    *including* the scope id it insists on, which the kernel reports as 0 for a global one)."""
    from async_upnp_client.ssdp import build_ssdp_search_packet, decode_ssdp_packet

    loop = asyncio.get_running_loop()
    pending: list[asyncio.Task[None]] = []

    class _Answers(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if addr[0].partition("%")[0] != target[0].partition("%")[0]:
                return  # only the gateway's own answer
            try:
                _, headers = decode_ssdp_packet(data, None, addr)
            except Exception:  # a malformed answer is no answer
                return
            pending.append(loop.create_task(on_response(headers)))

    transport, _ = await loop.create_datagram_endpoint(_Answers, family=socket.AF_INET6)
    try:
        transport.sendto(build_ssdp_search_packet(target, SEARCH_S, search_target), target)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), SEARCH_S + SEARCH_SLACK_S)
    except OSError as exc:
        raise PortMapError(Method.UPNP, "no_device", f"SSDP to {target[0]}: {exc}") from exc
    finally:
        transport.close()
        for task in pending:
            task.cancel()


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


def _pinhole_actions(igd: Any) -> Any:
    service = igd.device.find_service(PINHOLE_SERVICE)  # in the WANConnectionDevice
    if service is None:
        raise PortMapError(
            Method.UPNP, "no_pinhole_service", "the router offers no WANIPv6FirewallControl"
        )
    return service


async def upnp_pinhole(
    gateway: str,
    internal_ip6: str,
    internal_port: int,
    lifetime_s: int,
    location: str = "",
    pinhole_id: int | None = None,
) -> PortMapping:
    """Opens (or, with ``pinhole_id``, renews) an inbound IPv6 pinhole for UDP
    ``internal_ip6``:``internal_port`` from anywhere, for ``lifetime_s``."""
    from async_upnp_client.exceptions import UpnpError

    m = Method.UPNP
    lease = min(max(lifetime_s, 1), MAX_PINHOLE_LEASE_S)
    try:
        location = location or await discover(gateway)
        igd = await _device(location)
        service = _pinhole_actions(igd)
        if pinhole_id is not None:
            await service.action("UpdatePinhole").async_call(
                UniqueID=pinhole_id, NewLeaseTime=lease
            )
        else:
            state = await service.action("GetFirewallStatus").async_call()
            if not state.get("InboundPinholeAllowed"):
                raise PortMapError(
                    m, "not_allowed", "the router's firewall allows no inbound pinholes"
                )
            pinhole_id = await _add_pinhole(service, internal_ip6, internal_port, lease)
    except PortMapError:
        raise
    except (TimeoutError, UpnpError, OSError, KeyError, ValueError) as exc:
        raise PortMapError(m, "refused", f"{type(exc).__name__}: {exc}") from exc
    return PortMapping(
        m, gateway, internal_ip6, internal_port, internal_ip6, internal_port, lease,
        time.monotonic(), location=location, pinhole_id=pinhole_id,
    )  # fmt: skip


async def _add_pinhole(service: Any, internal_ip6: str, internal_port: int, lease: int) -> int:
    """AddPinhole for our UDP port from anywhere; the router's UniqueID (miniupnpd answers an
    existing pinhole's id for the same tuple)."""
    answer = await service.action("AddPinhole").async_call(
        RemoteHost=ANY_REMOTE,
        RemotePort=0,
        InternalClient=internal_ip6,
        InternalPort=internal_port,
        Protocol=UDP_PROTOCOL,
        LeaseTime=lease,
    )
    return int(answer["UniqueID"])


async def upnp_pinhole_delete(
    location: str, internal_ip6: str, internal_port: int, pinhole_id: int | None
) -> None:
    """Closes our pinhole; without its id (killed before the router's answer was journaled),
    asks for the same pinhole again to learn it."""
    igd = await _device(location)
    service = _pinhole_actions(igd)
    if pinhole_id is None:
        pinhole_id = await _add_pinhole(service, internal_ip6, internal_port, 1)
    await service.action("DeletePinhole").async_call(UniqueID=pinhole_id)
