"""The uplink: the interface of the default route, found through netlink (pyroute2).

Among the default routes of the main table the lowest metric wins (the one the kernel uses);
a multipath default route counts by its first hop. Interface names are taken from netlink as
they are — dashes and dots included — never parsed out of ``ip`` text. No default route is a
:class:`~higgs.osnet.errors.DiscoveryError`, raised before anything is changed.

:class:`UplinkWatcher` polls and calls back when the uplink changes (default route moved to
another interface or gateway, addresses or MTU changed, uplink lost or regained), so the
firewall's NAT can follow it.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from higgs.osnet import netlink
from higgs.osnet.errors import DiscoveryError

__all__ = [
    "Uplink",
    "UplinkWatcher",
    "default_uplink",
    "interface_addresses",
    "internet_v6",
    "ipv6_uplink",
]

log = logging.getLogger(__name__)

Family = Literal[4, 6]
IfAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_RTN_UNICAST = 1
_IFA_F_TEMPORARY = 0x01
_RT_SCOPE_UNIVERSE = 0


@dataclass(frozen=True)
class Uplink:
    name: str
    index: int
    family: Family  # of the default route that chose it
    gateway: str | None  # None for a point-to-point default route ("dev ppp0")
    metric: int
    mtu: int
    addresses: tuple[IfAddr, ...]  # every address on the interface, v4 and v6

    def global_addresses(self, family: Family | None = None) -> tuple[IfAddr, ...]:
        """Addresses usable as a source towards the internet (not link-local/loopback)."""
        return tuple(
            a
            for a in self.addresses
            if (family is None or a.version == family) and not a.is_link_local and not a.is_loopback
        )

    @property
    def address(self) -> IfAddr | None:
        """The first global address of the default route's family."""
        found = self.global_addresses(self.family)
        return found[0] if found else None


def _addresses(ipr: Any, index: int) -> tuple[IfAddr, ...]:
    out: list[IfAddr] = []
    for msg in ipr.addr("dump", index=index):
        addr = msg.get("address")
        if addr is None or msg.get("index") != index:
            continue
        out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
    return tuple(sorted(out, key=lambda a: (a.version, a.is_link_local, str(a))))


def interface_addresses(name: str, *, netns: str | None = None) -> tuple[IfAddr, ...]:
    def get(ipr: Any) -> tuple[IfAddr, ...]:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise DiscoveryError(f"interface {name} does not exist")
        return _addresses(ipr, found[0])

    return netlink.call(get, netns)


def _first_hop(route: Any) -> tuple[int | None, str | None]:
    oif, gateway = route.get("oif"), route.get("gateway")
    hops = route.get("multipath")
    if oif is None and hops:
        hop = hops[0]
        oif = hop["oif"] if "oif" in hop else hop.get("index")
        gateway = hop.get("gateway")
    return oif, gateway


def default_uplink(
    family: Family = 4,
    *,
    netns: str | None = None,
    exclude: Iterable[str] = (),
) -> Uplink:
    """The interface of the lowest-metric default route of ``family`` in the main table.

    ``exclude`` names interfaces never to pick (e.g. our own WireGuard interface).
    """
    skip = set(exclude)

    def find(ipr: Any) -> Uplink:
        names = {link["index"]: link for link in ipr.link("dump")}
        best: tuple[int, int, str | None] | None = None
        for r in ipr.route("dump", family=_AF[family], table=254):
            if r["dst_len"] != 0 or r["type"] != _RTN_UNICAST:
                continue
            oif, gateway = _first_hop(r)
            if oif is None or names.get(oif) is None:
                continue
            if names[oif].get("ifname") in skip:
                continue
            metric = r.get("priority") or 0
            if best is None or metric < best[0]:
                best = (metric, oif, gateway)
        if best is None:
            raise DiscoveryError(
                f"no IPv{family} default route: connect the host to a network (check "
                f"`ip -{family} route show default`); nothing was changed"
            )
        metric, oif, gateway = best
        link = names[oif]
        return Uplink(
            name=str(link.get("ifname")),
            index=oif,
            family=family,
            gateway=gateway,
            metric=metric,
            mtu=int(link.get("mtu") or 0),
            addresses=_addresses(ipr, oif),
        )

    return netlink.call(find, netns)


_NOT_INTERNET_V6 = (
    ipaddress.IPv6Network("fc00::/7"),  # unique local: not routed on the internet
    ipaddress.IPv6Network("fec0::/10"),  # deprecated site-local
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
)


def internet_v6(addresses: Iterable[IfAddr]) -> tuple[ipaddress.IPv6Interface, ...]:
    """The IPv6 addresses that can be a source towards the internet. Not ``is_global``:
    Python calls documentation prefixes (2001:db8::/32, used by test labs) not global."""
    return tuple(
        a
        for a in addresses
        if isinstance(a, ipaddress.IPv6Interface)
        and not (a.is_link_local or a.is_loopback or a.is_multicast or a.is_unspecified)
        and not any(a.ip in net for net in _NOT_INTERNET_V6)
    )


def ipv6_uplink(*, netns: str | None = None, exclude: Iterable[str] = ()) -> Uplink | None:
    """The IPv6 uplink when the host has internet IPv6: an IPv6 default route whose interface
    holds an address :func:`internet_v6` accepts. None otherwise (no error: IPv6 is optional)."""
    try:
        up = default_uplink(6, netns=netns, exclude=exclude)
    except DiscoveryError:
        return None
    return up if internet_v6(up.addresses) else None


OnChange = Callable[[Uplink | None, Uplink | None], Awaitable[None] | None]


class UplinkWatcher:
    """Polls the uplink every ``interval`` seconds and calls ``on_change(old, new)`` when it
    differs (``None`` means no default route). Run it as a task: ``await watcher.run()``.

    Polling rather than netlink events: pyroute2's event socket does not mix with a running
    asyncio loop in 0.9 (see :mod:`higgs.osnet.netlink`), and a second's delay in moving NAT
    rules is harmless; the poll is one netlink dump.
    """

    def __init__(
        self,
        on_change: OnChange,
        *,
        family: Family = 4,
        netns: str | None = None,
        exclude: Iterable[str] = (),
        interval: float = 1.0,
    ) -> None:
        self._on_change = on_change
        self._family: Family = family
        self._netns = netns
        self._exclude = tuple(exclude)
        self.interval = interval
        self.current: Uplink | None = None

    def _read(self) -> Uplink | None:
        try:
            return default_uplink(self._family, netns=self._netns, exclude=self._exclude)
        except DiscoveryError:
            return None

    async def prime(self) -> Uplink | None:
        """Reads the current uplink without calling back (call before :meth:`run`)."""
        self.current = await asyncio.to_thread(self._read)
        return self.current

    async def poll_once(self) -> bool:
        """One poll; True when a change was reported."""
        new = await asyncio.to_thread(self._read)
        if new == self.current:
            return False
        old, self.current = self.current, new
        log.info(
            "uplink changed: %s -> %s",
            old.name if old else "none",
            new.name if new else "none",
        )
        result = self._on_change(old, new)
        if inspect.isawaitable(result):
            await result
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except netlink.NetlinkError as exc:
                log.warning("uplink poll failed: %s", exc)
            await asyncio.sleep(self.interval)
