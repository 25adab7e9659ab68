"""The pure half of bench.connect: reading ``ping -D`` and summarising connects."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping, Sequence

from bench.harness import percentile

__all__ = [
    "PHASE_ORDER",
    "by_phase_order",
    "first_reply_after",
    "last_outage",
    "phase_medians",
    "reply_times",
    "summary",
]

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")

# The order of docs/client.md's table; phases a path does not have are left out.
PHASE_ORDER = (
    "process_start",
    "journal_open",
    "journal_replay",
    "daemon_init",
    "relay_rtt",
    "route_request",
    "resolve",
    "interface",
    "wireguard_config",
    "addresses",
    "routing",
    "dns",
    "kill_switch",
    "peer",
    "relay_start",
    "handshake_direct",
    "handshake_udp_relay",
    "handshake_relay",
    "first_packet",
    "status_write",
    "other",
    "total",
)


def reply_times(lines: Iterable[str]) -> list[float]:
    """Unix times of the echo replies in ``ping -D`` output."""
    return [float(m.group(1)) for line in lines if (m := _REPLY.match(line))]


def first_reply_after(lines: Iterable[str], t0: float) -> float | None:
    """Seconds from ``t0`` (unix time) to the first reply received after it, or None."""
    later = [t for t in reply_times(lines) if t > t0]
    return min(later) - t0 if later else None


def last_outage(
    lines: Iterable[str], t0: float, *, gap_s: float = 0.5
) -> tuple[float, float] | None:
    """The last interruption of the echoes that ended after ``t0`` (unix time): (start, end)
    in seconds from ``t0``, start being the last reply before it (or ``t0``), end the first
    reply after it; a gap is more than ``gap_s`` between replies. None: no interruption.

    A higgsnode killed with SIGKILL leaves its wireguard-go running, which goes on carrying
    the tunnel until the restarted node's recovery replaces it: the client is served again
    at the end of that interruption, not at the first echo after the restart command."""
    times = sorted(t for t in reply_times(lines) if t > t0 - 1.0)
    before = [t for t in times if t <= t0]
    prev = before[-1] if before else t0
    last: tuple[float, float] | None = None
    for t in (t for t in times if t > t0):
        if t - prev > gap_s:
            last = (max(prev, t0) - t0, t - t0)
        prev = t
    return last


def summary(values: Sequence[float]) -> tuple[float, float]:
    """(median, p90)."""
    return statistics.median(values), percentile(values, 90)


def by_phase_order(names: Iterable[str]) -> list[str]:
    """``names`` in :data:`PHASE_ORDER`, unknown ones after them in alphabetical order."""
    known = set(PHASE_ORDER)
    uniq = set(names)
    return [n for n in PHASE_ORDER if n in uniq] + sorted(uniq - known)


def phase_medians(timings: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The median of each phase over the connects, a missing phase counted as 0 (a path that
    answered at once on some connects and not on others); in :data:`PHASE_ORDER`."""
    ordered = by_phase_order(k for t in timings for k in t)
    return {n: statistics.median([float(t.get(n, 0.0)) for t in timings]) for n in ordered}
