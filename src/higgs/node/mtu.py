"""The node's tunnel MTU: the configured one, or computed from the uplink and the paths served.

The arithmetic (overheads, the 1280..1420 clamp, why the relay uses the IPv4 figure) lives in
:mod:`higgs.osnet.mtu`; here the node decides which paths it serves:

- **direct** when an ``endpoint`` is announced: ``udp4`` for an IPv4 address, ``udp6`` for an
  IPv6 one, both for a name (clients may resolve it to either family);
- **relay** whenever a server is configured (clients may always fall back to it).

A configured ``mtu`` wins; the computed figure is still worked out, so a configured value that
would not fit the uplink is named in the log. The result goes on the WireGuard interface, into
the registration and every heartbeat (``tunnel_mtu``), and from the server into the clients'
configs. The agent recomputes it when the uplink's MTU changes.
"""

from __future__ import annotations

import ipaddress
import logging

from higgs.node.settings import NodeSettings
from higgs.osnet.mtu import (
    WG_OVERHEAD,
    MtuDecision,
    MtuError,
    PathKind,
    probe_path_mtu,
    tunnel_mtu,
)
from higgs.osnet.runner import Runner

__all__ = ["decide_mtu", "fits_uplink", "probe", "served_paths"]

log = logging.getLogger(__name__)


def served_paths(settings: NodeSettings) -> tuple[PathKind, ...]:
    """The ways clients reach this node (see the module docstring)."""
    paths: list[PathKind] = []
    if settings.endpoint:
        host = settings.endpoint.rpartition(":")[0].strip("[]")
        try:
            paths.append("udp6" if ipaddress.ip_address(host).version == 6 else "udp4")
        except ValueError:
            paths += ["udp4", "udp6"]
    if settings.server:
        paths.append("relay")
    # Neither (a node without server or endpoint cannot start): size for plain IPv4 UDP.
    return tuple(paths) or ("udp4",)


def fits_uplink(settings: NodeSettings, mtu: int, uplink_mtu: int) -> bool:
    """Whether a tunnel MTU plus the worst outer headers of the served paths fits the uplink."""
    worst = max(WG_OVERHEAD[6 if p == "udp6" else 4] for p in served_paths(settings))
    return mtu + worst <= uplink_mtu


def decide_mtu(settings: NodeSettings, uplink_mtu: int, path_mtu: int | None = None) -> MtuDecision:
    """The tunnel MTU for this node; ``path_mtu`` is a probe's result (None: no probe ran)."""
    auto = tunnel_mtu(uplink_mtu, served_paths(settings), path_mtu=path_mtu)
    if settings.mtu is None:
        return auto
    return MtuDecision(
        mtu=settings.mtu,
        limited_by=auto.limited_by,
        reason=f"configured (automatic would be {auto.mtu}: {auto.reason})",
    )


def probe(settings: NodeSettings, runner: Runner, uplink_mtu: int) -> int | None:
    """The path MTU towards ``mtu_probe_target``; None when none is set (or it does not
    answer). Blocks for up to a few dozen one-second pings: run it in a thread."""
    if settings.mtu_probe_target is None or settings.mtu is not None:
        return None  # a configured MTU wins, so its probe would be wasted pings
    try:
        return probe_path_mtu(settings.mtu_probe_target, runner, max_mtu=uplink_mtu)
    except MtuError as exc:  # e.g. an uplink below the IPv6 minimum for an IPv6 target
        log.warning("path-MTU probe skipped: %s", exc)
        return None
