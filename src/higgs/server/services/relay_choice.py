"""Which relay host carries a session (pure; issue 14 item 3, docs/scaleout.md).

A relayed packet crosses both legs, client → relay → node, so the relay of a session is the
one with the smallest sum of the two measured round-trip times. A leg nobody measured (an old
node or client, a probe lost) counts :data:`UNMEASURED_MS`, so a host measured by both ends
wins over one measured by a single end, and that one over a host nobody measured. Ties go to
the host with more free ports, then to the lower address (stable answers for equal hosts).
Both legs are pinned to the chosen host: the session's one lease names it, and so does its
WebSocket relay: a session leased on a host that serves the WebSocket hub (a registered
``ws_url``) is relayed by that hub (:func:`hubs_of`), else by the API instance's, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["UNMEASURED_MS", "Candidate", "hubs_of", "leg_cost", "rank"]

# Larger than any RTT a probe reports (its timeout is 0.5 s), smaller than two of them.
UNMEASURED_MS = 1_000.0


@dataclass(frozen=True, slots=True)
class Candidate:
    address: str
    free_ports: int


def leg_cost(rtts: Mapping[str, float] | None, address: str) -> float:
    value = (rtts or {}).get(address)
    return float(value) if value is not None and value >= 0 else UNMEASURED_MS


def rank(
    candidates: Sequence[Candidate],
    client_rtt: Mapping[str, float] | None,
    node_rtt: Mapping[str, float] | None,
) -> list[Candidate]:
    """The live hosts with a free port, best first."""
    usable = [c for c in candidates if c.free_ports > 0]
    return sorted(
        usable,
        key=lambda c: (
            leg_cost(client_rtt, c.address) + leg_cost(node_rtt, c.address),
            -c.free_ports,
            c.address,
        ),
    )


def hubs_of(leased_on: Mapping[str, str], ws_urls: Mapping[str, str]) -> dict[str, str]:
    """Session id → the WebSocket hub URL of the live host its lease names (``leased_on``:
    session → host address; ``ws_urls``: live host → its hub). A session whose host has no
    hub (or is down) is absent: it keeps the API instance's hub."""
    return {sid: ws_urls[host] for sid, host in leased_on.items() if host in ws_urls}
