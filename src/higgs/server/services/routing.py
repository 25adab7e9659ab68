"""Route selection: which node gets a new session, and which tunnel address it gets.

Pure functions over plain data, so the policy is testable without a database.

**Eligibility.** A node is a candidate when it is ``online``, has a free slot
(open sessions < ``max_clients``) and a free tunnel address, has budget left (a reported
``budget_left_mb`` of 0 excludes it), and matches the request: ``node_id``, ``country``,
``min_bandwidth_mbps`` (a node that did not report a bandwidth does not match a minimum) and
``mode="direct"`` (only nodes with a reachable endpoint).

**Score** (higher wins; ties broken by fewer open sessions, then node id)::

    score = 3.0 * (1 - load)              load = open_sessions / max_clients
          + 1.0 * budget_fraction          budget_left_mb / budget_total_mb; 1 if unlimited/unknown
          + 1.0 * latency_term             1 / (1 + latency_ms / 50); 0.5 if not reported
          + 2.0 * connected                the node's control link is up right now

Load dominates so that sessions spread across nodes; a node whose link is down can still be
chosen (it receives its peers in ``sync`` when it reconnects) but loses to any connected one
with similar load.

**Inputs.** The server evaluates this over its in-memory node view
(:mod:`higgs.server.services.nodeview`), not the node table: ``open_sessions`` follows every
session opened and closed, ``budget_*`` and ``latency_ms`` come from the node's last heartbeat,
``connected`` is asked of the relay hub at request time. The route transaction then re-checks
the chosen node's open sessions in the database, and the unique index over open sessions'
(node, tunnel address) keeps addresses collision-free (a request that loses a race chooses
again).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from higgs.server.store.states import NodeState, RouteMode

__all__ = [
    "Candidate",
    "RouteWish",
    "allocate_address",
    "asks_anything",
    "best_of",
    "node_address",
    "pick",
    "score",
]

W_LOAD = 3.0
W_BUDGET = 1.0
W_LATENCY = 1.0
W_CONNECTED = 2.0
LATENCY_SCALE_MS = 50.0


@dataclass(frozen=True)
class Candidate:
    """What routing knows of a node. Immutable, so its score is computed once (the server
    keeps candidates between requests and rebuilds one only when its node changed)."""

    node_id: str
    state: str
    open_sessions: int
    max_clients: int
    country: str | None
    bandwidth_mbps: float | None
    has_endpoint: bool
    connected: bool
    free_addresses: int
    budget_left_mb: float | None = None
    budget_total_mb: float | None = None
    latency_ms: float | None = None

    @cached_property
    def score(self) -> float:
        return score(self)

    @cached_property
    def rank(self) -> tuple[float, int, str]:
        """Higher wins: the score, then fewer open sessions, then the node id."""
        return (score(self), -self.open_sessions, self.node_id)

    @cached_property
    def can_take_any(self) -> bool:
        """Whether the node could take a session at all, whatever the request asks."""
        return _own_rejection(self) is None


@dataclass(frozen=True)
class RouteWish:
    node_id: str | None = None
    country: str | None = None
    min_bandwidth_mbps: float | None = None
    mode: str = RouteMode.AUTO


def score(c: Candidate) -> float:
    load = min(1.0, c.open_sessions / c.max_clients) if c.max_clients else 1.0
    if c.budget_left_mb is None:
        budget = 1.0
    elif c.budget_total_mb:
        budget = max(0.0, min(1.0, c.budget_left_mb / c.budget_total_mb))
    else:
        budget = 1.0 if c.budget_left_mb > 0 else 0.0
    latency = 0.5 if c.latency_ms is None else 1.0 / (1.0 + c.latency_ms / LATENCY_SCALE_MS)
    return (
        W_LOAD * (1.0 - load)
        + W_BUDGET * budget
        + W_LATENCY * latency
        + W_CONNECTED * (1.0 if c.connected else 0.0)
    )


def _own_rejection(c: Candidate) -> str | None:
    """Why the node cannot take any session, or None (independent of the request)."""
    if c.state != NodeState.ONLINE:
        return f"node is {c.state}"
    if c.open_sessions >= c.max_clients:
        return "node is full"
    if c.free_addresses < 1:
        return "node has no free tunnel address"
    if c.budget_left_mb is not None and c.budget_left_mb <= 0:
        return "node has no bandwidth budget left"
    return None


def _wish_rejection(c: Candidate, wish: RouteWish) -> str | None:
    """Why the node does not match what the request asks for, or None."""
    if wish.node_id is not None and c.node_id != wish.node_id:
        return "not the requested node"
    if wish.country is not None and c.country != wish.country:
        return f"node is in {c.country or 'an unknown country'}"
    if wish.min_bandwidth_mbps is not None and (
        c.bandwidth_mbps is None or c.bandwidth_mbps < wish.min_bandwidth_mbps
    ):
        return "bandwidth below the requested minimum"
    if wish.mode == RouteMode.DIRECT and not c.has_endpoint:
        return "node has no direct endpoint"
    return None


def _rejection(c: Candidate, wish: RouteWish) -> str | None:
    """Why the candidate cannot take the session, or None when it can."""
    if wish.node_id is not None and c.node_id != wish.node_id:
        return "not the requested node"
    if c.state != NodeState.ONLINE:
        return f"node is {c.state}"
    return _wish_rejection(c, wish) or _own_rejection(c)


def asks_anything(wish: RouteWish) -> bool:
    """Whether the request narrows the choice (a node, a country, a bandwidth, direct)."""
    return (
        wish.node_id is not None
        or wish.country is not None
        or wish.min_bandwidth_mbps is not None
        or wish.mode == RouteMode.DIRECT
    )


def best_of(candidates: Iterable[Candidate], wish: RouteWish) -> Candidate | None:
    """The best candidate that fits, or None; one pass over any iterable, so the caller can
    stream candidates without building a list (the route hot path at N nodes)."""
    # The request-independent checks and the rank are cached on each candidate.
    best: Candidate | None = None
    best_rank: tuple[float, int, str] | None = None
    filtered = asks_anything(wish)
    for c in candidates:
        if not c.can_take_any or (filtered and _wish_rejection(c, wish) is not None):
            continue
        rank = c.rank
        if best_rank is None or rank > best_rank:
            best, best_rank = c, rank
    return best


def pick(candidates: Sequence[Candidate], wish: RouteWish) -> tuple[Candidate | None, str]:
    """The best candidate, or None with a message saying why nothing fits."""
    best = best_of(candidates, wish)
    if best is not None:
        return best, ""
    if wish.node_id is not None:
        named = [c for c in candidates if c.node_id == wish.node_id]
        if not named:
            return None, f"node {wish.node_id} does not exist"
        return None, f"node {wish.node_id} cannot take a session: {_rejection(named[0], wish)}"
    online = [c for c in candidates if c.state == NodeState.ONLINE]
    if not online:
        return None, "no node is online"
    reasons = sorted({r for c in online if (r := _rejection(c, wish))})
    return None, "no online node fits the request (" + "; ".join(reasons) + ")"


def node_address(subnet: str) -> ipaddress.IPv4Interface:
    """The node's own tunnel address: the first host of its subnet (e.g. 10.77.0.1/24)."""
    net = ipaddress.IPv4Network(subnet)
    return ipaddress.IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}")


def host_capacity(subnet: str) -> int:
    """Client addresses in the subnet: all hosts except network, broadcast and the node."""
    net = ipaddress.IPv4Network(subnet)
    return max(0, net.num_addresses - 3)


def allocate_address(subnet: str, used: Iterable[str]) -> ipaddress.IPv4Address | None:
    """The lowest free client address (never network, broadcast or the node's .1)."""
    net = ipaddress.IPv4Network(subnet)
    taken = {ipaddress.IPv4Interface(u).ip for u in used}
    taken.add(net.network_address + 1)
    for host in net.hosts():
        if host not in taken:
            return host
    return None
