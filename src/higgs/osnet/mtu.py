"""The tunnel MTU: computed from the uplink MTU and the paths clients use, optionally refined
by a path-MTU probe to a configured target.

Why these numbers
-----------------
A WireGuard data packet adds, around the inner IP packet, 32 bytes of its own (4 type +
4 receiver index + 8 counter + 16 authentication tag) plus the outer UDP (8) and IP header
(20 for IPv4, 40 for IPv6). So an inner packet of ``M`` bytes needs an outer path of
``M + 60`` (IPv4) or ``M + 80`` (IPv6) bytes; 1500 - 80 = 1420 is WireGuard's own default.

- **Direct UDP over IPv4 / IPv6**: ``path - 60`` / ``path - 80``, where ``path`` is the
  uplink MTU, or the discovered path MTU when a probe ran (it can only be smaller).
- **Relay over TCP/WebSocket**: the datagram travels inside a TCP stream, which segments it
  to whatever the path allows, so the relay leg does not limit the datagram size. We still
  use the direct IPv4 figure, because (1) the route answer gives a client both paths and one
  MTU, and a session may move between them without renegotiating; (2) the decrypted inner
  packets leave the node through its uplink, so they should fit it without fragmentation.
- **Clamped to [1280, 1420]**. 1280 is the IPv6 minimum link MTU: below it the tunnel could
  not carry IPv6 at all, so on tiny paths we accept that outer packets get fragmented rather
  than break IPv6. 1420 is the ceiling even on jumbo-frame uplinks, because the client's side
  of the path is almost always an ordinary 1500-byte internet path.

When several paths are served (e.g. direct over IPv4 and IPv6, and the relay), the smallest
result wins: one interface MTU has to fit them all.

The probe
---------
``ping -M do`` (don't fragment) of a chosen size, searched by bisection, through the command
funnel. A reply proves the size fits end to end, so the probe also finds the MTU of a path
whose routers drop ICMP "fragmentation needed" (a black hole) -- it just takes longer, one
``-W`` wait per too-large probe. When the kernel or a router names the MTU in the error
(``mtu = 1400``), that size is tried next, which usually ends the search in two more probes.
The target is always configured by the operator; there is no default address (this code
never sends traffic to an address nobody chose).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from higgs.osnet.errors import CommandError, OsnetError
from higgs.osnet.runner import Runner

__all__ = [
    "ICMP_OVERHEAD",
    "MAX_TUNNEL_MTU",
    "MIN_TUNNEL_MTU",
    "WG_OVERHEAD",
    "MtuDecision",
    "MtuError",
    "PathKind",
    "ping_argv",
    "probe_path_mtu",
    "tunnel_mtu",
]

log = logging.getLogger(__name__)

PathKind = Literal["udp4", "udp6", "relay"]

WG_OVERHEAD = {4: 60, 6: 80}  # outer IP + UDP (8) + WireGuard data header and tag (32)
ICMP_OVERHEAD = {4: 28, 6: 48}  # IP header + ICMP echo header (8): ping -s is the payload
MIN_TUNNEL_MTU = 1280  # the IPv6 minimum link MTU
MAX_TUNNEL_MTU = 1420  # WireGuard's default: 1500 - 80
_MIN_PROBE_MTU = {4: 576, 6: 1280}  # every IPv4 host takes 576; every IPv6 link 1280
_MAX_MTU = 65535
_MAX_PROBES = 40  # bisection of 576..65535 needs 17 sizes; retries of lost pings add some
_HINT_RE = re.compile(r"mtu\s*[=:]\s*(\d+)", re.IGNORECASE)


class MtuError(OsnetError, ValueError):
    """An MTU input is impossible (e.g. an uplink MTU of 0, a probe target that is a name)."""


@dataclass(frozen=True)
class MtuDecision:
    """The tunnel MTU and why: ``limited_by`` is the path that set it, ``reason`` a sentence
    for logs, ``higgsnode diagnose`` and heartbeats."""

    mtu: int
    limited_by: PathKind
    reason: str


def _check_mtu(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MtuError(f"{what} must be an integer, not {value!r}")
    if not 68 <= value <= _MAX_MTU:
        raise MtuError(f"{what} {value} is outside 68..{_MAX_MTU}")
    return value


def _for_path(base: int, path: PathKind) -> int:
    if path == "udp6":
        return base - WG_OVERHEAD[6]
    # "udp4" and "relay" (see the module docstring for why the relay uses the IPv4 figure).
    return base - WG_OVERHEAD[4]


def tunnel_mtu(
    uplink_mtu: int,
    paths: Iterable[PathKind] = ("udp4",),
    *,
    path_mtu: int | None = None,
) -> MtuDecision:
    """The MTU for the tunnel interface and the clients' configs.

    ``uplink_mtu`` is the MTU of the node's uplink; ``paths`` the ways clients reach the node;
    ``path_mtu`` the result of :func:`probe_path_mtu` when one ran (None otherwise).
    """
    _check_mtu(uplink_mtu, "uplink MTU")
    kinds = tuple(dict.fromkeys(paths))
    if not kinds:
        raise MtuError("at least one path (udp4, udp6, relay) is needed")
    for kind in kinds:
        if kind not in ("udp4", "udp6", "relay"):
            raise MtuError(f"unknown path {kind!r}: use udp4, udp6 or relay")
    base, source = uplink_mtu, f"uplink MTU {uplink_mtu}"
    if path_mtu is not None:
        _check_mtu(path_mtu, "path MTU")
        if path_mtu < uplink_mtu:
            base, source = path_mtu, f"path MTU {path_mtu} (uplink {uplink_mtu})"
    # Ties: the first path given is named.
    limited_by = min(kinds, key=lambda k: _for_path(base, k))
    raw = _for_path(base, limited_by)
    overhead = base - raw
    if raw < MIN_TUNNEL_MTU:
        mtu = MIN_TUNNEL_MTU
        why = (
            f"{source} - {overhead} ({limited_by}) = {raw} is below {MIN_TUNNEL_MTU}, the IPv6 "
            "minimum; using it anyway (outer packets will be fragmented)"
        )
    elif raw > MAX_TUNNEL_MTU:
        mtu = MAX_TUNNEL_MTU
        why = f"{source} - {overhead} ({limited_by}) = {raw}, capped at {MAX_TUNNEL_MTU}"
    else:
        mtu = raw
        why = f"{source} - {overhead} ({limited_by}) = {raw}"
    return MtuDecision(mtu=mtu, limited_by=limited_by, reason=why)


def _target(target: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(target)
    except ValueError:
        # A name would need a resolver, and we want to know exactly where packets go.
        raise MtuError(f"path-MTU probe target {target!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise MtuError(f"path-MTU probe target {target} is not a unicast address")
    return ip


def ping_argv(target: str, mtu: int, *, wait_s: int = 1) -> list[str]:
    """The ping that tests whether a packet of ``mtu`` bytes reaches ``target`` unfragmented."""
    ip = _target(target)
    payload = mtu - ICMP_OVERHEAD[ip.version]
    if payload < 0:
        raise MtuError(f"an MTU of {mtu} leaves no room for an ICMP echo")
    return [
        "ping", f"-{ip.version}", "-n", "-M", "do", "-c", "1", "-W", str(wait_s),
        "-s", str(payload), str(ip),
    ]  # fmt: skip


def _hint(text: str) -> int | None:
    found = _HINT_RE.search(text)
    return int(found.group(1)) if found else None


def probe_path_mtu(
    target: str,
    runner: Runner,
    *,
    max_mtu: int = 1500,
    min_mtu: int | None = None,
    wait_s: int = 1,
    attempts: int = 2,
) -> int | None:
    """The largest packet (IP bytes) that reaches ``target`` with don't-fragment set, between
    ``min_mtu`` (default 576 for IPv4, 1280 for IPv6) and ``max_mtu`` (give the uplink MTU).

    Returns None when the target does not answer even at ``min_mtu`` (unreachable, or it
    drops pings) or when ping cannot run; the caller then keeps the computed MTU. Never more
    than a couple of dozen pings, each waiting at most ``wait_s`` for its reply. A ping that
    fails without an ICMP error naming an MTU may just have been lost (the very first one
    often is, while the neighbour is resolved): it is tried ``attempts`` times.
    """
    ip = _target(target)
    low = _MIN_PROBE_MTU[ip.version] if min_mtu is None else min_mtu
    _check_mtu(max_mtu, "probe maximum")
    _check_mtu(low, "probe minimum")
    if low > max_mtu:
        raise MtuError(f"probe minimum {low} is above the maximum {max_mtu}")
    probes = 0

    def fits(size: int) -> tuple[bool, int | None]:
        nonlocal probes
        argv = ping_argv(str(ip), size, wait_s=wait_s)
        for _ in range(max(1, attempts)):
            probes += 1
            result = runner.run(argv, check=False, timeout=wait_s + 10)
            if result.returncode not in (0, 1):
                # 2: ping itself failed (no route, bad option); nothing to learn from sizes.
                raise _Unusable(result.stderr.strip() or result.stdout.strip())
            hint = _hint(result.stdout + "\n" + result.stderr)
            if result.ok or hint is not None:
                break
        return result.ok, hint

    try:
        ok, _ = fits(low)
        if not ok:
            log.warning("path-MTU probe: %s does not answer a %d-byte ping", ip, low)
            return None
        ok, hint = fits(max_mtu)
        if ok:
            return max_mtu
        high = max_mtu  # invariant: `low` fits, `high` does not
        after_hint = False
        while high - low > 1 and probes < _MAX_PROBES:
            if hint is not None and low < hint < high:
                size, hint, after_hint = hint, None, True
            elif after_hint:
                # The named MTU fitted: one byte more settles it unless a later hop is smaller.
                size, after_hint = low + 1, False
            else:
                size = (low + high) // 2
            ok, new_hint = fits(size)
            if ok:
                low = size
            else:
                high, hint, after_hint = size, new_hint, False
        log.info("path-MTU probe: %s takes %d bytes (%d pings)", ip, low, probes)
        return low
    except _Unusable as exc:
        log.warning("path-MTU probe to %s failed: %s", ip, exc)
        return None
    except CommandError as exc:  # ping missing or hung
        log.warning("path-MTU probe to %s could not run: %s", ip, exc)
        return None


class _Unusable(Exception):
    """ping failed for a reason other than the packet size."""
