"""Default-route and interface parsers for macOS and Windows command output.

No backend for those systems exists yet; when one does, uplink detection is ready and tested
against real captured output (``tests/unit/osnet/data/``, sources in ``SOURCES.md``). Pure
functions: text in, typed values out, :class:`~higgs.osnet.errors.DiscoveryError` for output
that does not say what we need.

Commands these parse:

- macOS: ``route -n get default`` (the route the kernel picks; no metric is printed) and
  ``ifconfig -a`` (or ``ifconfig NAME``).
- Windows: ``route print`` — the Metric column there is already the effective metric
  (route + interface); the Interface column is the interface's *address*, not its name, and
  headers are localised, so rows are recognised by shape, not by header text.
- Windows PowerShell: :data:`WINDOWS_GET_NETROUTE` — ``Get-NetRoute``'s ``RouteMetric`` alone
  is not what Windows compares: it adds the interface's ``InterfaceMetric``, so the command
  asks for both. ``ConvertTo-Json`` prints a bare object instead of an array for one route;
  both shapes are accepted.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from higgs.osnet.discovery import Uplink
from higgs.osnet.errors import DiscoveryError

__all__ = [
    "WINDOWS_GET_NETROUTE",
    "DefaultRoute",
    "InterfaceInfo",
    "best_default",
    "macos_uplink",
    "parse_macos_ifconfig",
    "parse_macos_route_get",
    "parse_windows_get_netroute_json",
    "parse_windows_route_print",
]

Family = Literal[4, 6]
IfAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface

WINDOWS_GET_NETROUTE = (
    "Get-NetRoute -DestinationPrefix 0.0.0.0/0,::/0 | Select-Object DestinationPrefix,"
    "NextHop,RouteMetric,ifIndex,InterfaceAlias,AddressFamily,@{n='InterfaceMetric';"
    "e={(Get-NetIPInterface -InterfaceIndex $_.ifIndex -AddressFamily $_.AddressFamily)"
    ".InterfaceMetric}} | ConvertTo-Json"
)


@dataclass(frozen=True)
class DefaultRoute:
    interface: str  # name (macOS), alias (PowerShell) or the interface's address (route print)
    gateway: str | None  # None: on-link / point-to-point
    metric: int  # effective metric where the OS has one; 0 when it prints none (macOS)
    family: Family
    interface_index: int | None = None


@dataclass(frozen=True)
class InterfaceInfo:
    name: str
    flags: frozenset[str]
    mtu: int
    addresses: tuple[IfAddr, ...]  # without deprecated/tentative/duplicated ones
    index: int | None  # from an IPv6 "scopeid" when one is printed
    active: bool | None  # "status: active"; None when not printed (loopback, tunnels)


def best_default(routes: Iterable[DefaultRoute], family: Family = 4) -> DefaultRoute:
    """The lowest-metric default route of ``family``; ties keep the order printed."""
    candidates = [r for r in routes if r.family == family]
    if not candidates:
        raise DiscoveryError(f"no IPv{family} default route; nothing was changed")
    return min(candidates, key=lambda r: r.metric)


def _ip_or_none(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.split("%")[0]))
    except ValueError:
        return None  # "link#12", "On-link", a MAC address: no gateway address


# --- macOS --------------------------------------------------------------------------------

_KV = re.compile(r"^\s*([a-z ]+):\s*(.*?)\s*$")


def parse_macos_route_get(text: str) -> DefaultRoute:
    """``route -n get default`` -> the default route (interface, gateway)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        m = _KV.match(line)
        if m:
            fields[m.group(1).strip()] = m.group(2)
    iface = fields.get("interface")
    if not iface:
        raise DiscoveryError(
            "macOS has no default route (`route -n get default` names no interface)"
        )
    gateway = _ip_or_none(fields.get("gateway", ""))
    family: Family = 6 if gateway is not None and ":" in gateway else 4
    return DefaultRoute(iface, gateway, 0, family)


_IF_HEAD = re.compile(r"^(\S+?): flags=[0-9a-fA-F]+<([^>]*)> mtu (\d+)")
_INET = re.compile(r"^\s+inet (\S+)(?: --> \S+)? netmask (0x[0-9a-fA-F]+)")
_INET6 = re.compile(r"^\s+inet6 (\S+) prefixlen (\d+)(.*)$")
_SKIP6 = {"deprecated", "tentative", "duplicated", "detached"}


def parse_macos_ifconfig(text: str) -> dict[str, InterfaceInfo]:
    """``ifconfig -a`` -> interfaces by name."""
    out: dict[str, InterfaceInfo] = {}
    current: dict[str, Any] | None = None

    def flush() -> None:
        if current is not None:
            out[current["name"]] = InterfaceInfo(
                current["name"],
                frozenset(current["flags"]),
                current["mtu"],
                tuple(current["addresses"]),
                current["index"],
                current["active"],
            )

    for line in text.splitlines():
        head = _IF_HEAD.match(line)
        if head:
            flush()
            current = {
                "name": head.group(1),
                "flags": [f for f in head.group(2).split(",") if f],
                "mtu": int(head.group(3)),
                "addresses": [],
                "index": None,
                "active": None,
            }
            continue
        if current is None:
            continue
        if m := _INET.match(line):
            prefix = bin(int(m.group(2), 16)).count("1")
            current["addresses"].append(ipaddress.ip_interface(f"{m.group(1)}/{prefix}"))
        elif m := _INET6.match(line):
            words = m.group(3).split()
            if "scopeid" in words:
                current["index"] = int(words[words.index("scopeid") + 1], 16)
            if _SKIP6.isdisjoint(words):
                address = m.group(1).split("%")[0]
                current["addresses"].append(ipaddress.ip_interface(f"{address}/{m.group(2)}"))
        elif line.strip().startswith("status:"):
            current["active"] = line.split(":", 1)[1].strip() == "active"
    flush()
    return out


def macos_uplink(route_get: str, ifconfig: str) -> Uplink:
    """The uplink from the two macOS commands' output (``index`` 0 when unknown)."""
    route = parse_macos_route_get(route_get)
    interfaces = parse_macos_ifconfig(ifconfig)
    info = interfaces.get(route.interface)
    if info is None:
        raise DiscoveryError(f"the default route's interface {route.interface} is not in ifconfig")
    return Uplink(
        name=info.name,
        index=info.index or 0,
        family=route.family,
        gateway=route.gateway,
        metric=route.metric,
        mtu=info.mtu,
        addresses=info.addresses,
    )


# --- Windows ------------------------------------------------------------------------------


def parse_windows_route_print(text: str) -> list[DefaultRoute]:
    """Default routes (v4 and v6) among the *active* routes of ``route print``."""
    routes: list[DefaultRoute] = []
    v6_section = False
    headers_seen = 0  # per table: 1 = "Active Routes:", 2 = "Persistent Routes:" (any language)
    pending6: tuple[int, int, str] | None = None
    for line in text.splitlines():
        words = line.split()
        if not words or line.startswith("="):
            continue
        if words[0] in ("IPv4", "IPv6"):
            v6_section, headers_seen = words[0] == "IPv6", 0
            continue
        if line.rstrip().endswith(":"):
            headers_seen += 1
            continue
        if headers_seen != 1:
            continue
        if not v6_section:
            # dest, mask, gateway, interface address, metric (persistent rows have 4 columns).
            is_default = len(words) == 5 and words[:2] == ["0.0.0.0", "0.0.0.0"]
            if is_default and _all_ipv4([words[3]]) and words[4].isdigit():
                routes.append(DefaultRoute(words[3], _ip_or_none(words[2]), int(words[4]), 4))
            continue
        # IPv6 rows: "If Metric Destination Gateway"; a long destination wraps the gateway.
        if pending6 is not None and len(words) == 1:
            index, metric, dest = pending6
            pending6 = None
            if dest == "::/0":
                routes.append(DefaultRoute(str(index), _ip_or_none(words[0]), metric, 6, index))
            continue
        if len(words) >= 3 and words[0].isdigit() and words[1].isdigit():
            index, metric, dest = int(words[0]), int(words[1]), words[2]
            if len(words) == 3:
                pending6 = (index, metric, dest)
            elif dest == "::/0":
                routes.append(DefaultRoute(str(index), _ip_or_none(words[3]), metric, 6, index))
    return routes


def _all_ipv4(words: Iterable[str]) -> bool:
    try:
        return all(isinstance(ipaddress.ip_address(w), ipaddress.IPv4Address) for w in words)
    except ValueError:
        return False


def parse_windows_get_netroute_json(text: str) -> list[DefaultRoute]:
    """Default routes from :data:`WINDOWS_GET_NETROUTE` (or any ``Get-NetRoute`` JSON)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DiscoveryError(f"Get-NetRoute output is not JSON: {exc.msg}") from exc
    items = data if isinstance(data, list) else [data]
    routes: list[DefaultRoute] = []
    for item in items:
        if not isinstance(item, Mapping):
            raise DiscoveryError("Get-NetRoute JSON holds something that is not a route")
        prefix = str(item.get("DestinationPrefix", ""))
        if prefix not in ("0.0.0.0/0", "::/0"):
            continue
        index = item.get("ifIndex", item.get("InterfaceIndex"))
        metric = int(item.get("RouteMetric") or 0) + int(item.get("InterfaceMetric") or 0)
        next_hop = _ip_or_none(str(item.get("NextHop", "")))
        if next_hop in ("0.0.0.0", "::"):
            next_hop = None  # Windows' way of saying on-link
        routes.append(
            DefaultRoute(
                interface=str(item.get("InterfaceAlias") or index),
                gateway=next_hop,
                metric=metric,
                family=6 if prefix == "::/0" else 4,
                interface_index=None if index is None else int(index),
            )
        )
    return routes
