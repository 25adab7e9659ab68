"""The server's in-memory view of its nodes: what route selection reads.

Choosing a node must not load every node from the database (issue 3, control-plane
performance: at 1,000 nodes that was the whole cost of a route). Each non-stopped node has one
:class:`NodeFacts` here: what it registered (subnet, capacity, location), what its last
heartbeat reported (budget, latency), its state, and how many sessions it has open.

The server builds one view (``higgs.server.app``) and hands it to the registry and the
session service. Who keeps it current, all in this process: registration
(:meth:`NodeView.upsert`), heartbeats (:meth:`NodeView.heartbeat`), the offline sweep and
deregistration (:meth:`NodeView.set_state`, :meth:`NodeView.remove`), and every session opened
or closed (:meth:`NodeView.session_opened`, :meth:`NodeView.session_closed`; closes made by the
CLI reach it when the sweep announces them).
The database stays the truth: the route transaction re-counts the chosen node's open sessions,
and :meth:`NodeView.replace_all` reloads the view from the database at start and at each sweep,
skipping nodes that changed while the reload was reading (their in-memory figure is newer).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from higgs.server.services import routing
from higgs.server.store import node_facts
from higgs.server.store.db import Database
from higgs.server.store.states import NodeState

__all__ = ["NodeFacts", "NodeView", "metric_number", "refresh_view"]


def metric_number(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    """A numeric heartbeat metric, or None when absent or not a number."""
    value = (metrics or {}).get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(slots=True)
class NodeFacts:
    node_id: str
    state: str
    public_key: str
    endpoint: str | None
    tunnel_subnet: str
    tunnel_mtu: int
    max_clients: int
    bandwidth_mbps: float | None
    country: str | None
    region: str | None
    # The clients' IPv6 prefix the node registered (None: IPv4 only).
    tunnel_subnet_v6: str | None = None
    # The last heartbeat's word on IPv6: False once the node's uplink lost it.
    ipv6: bool | None = None
    budget_left_mb: float | None = None
    budget_total_mb: float | None = None
    latency_ms: float | None = None
    # The owner's pause switch (issue 15): a paused node takes no new sessions.
    paused: bool = False
    open_sessions: int = 0
    # The endpoint the node's router mapped (services.reachability); offered as ``endpoint``
    # only once a probe verified it.
    mapped: str | None = None
    # The node's measured RTT to each relay host (its last heartbeat; issue 14 item 3).
    relay_rtt_ms: Mapping[str, float] = field(default_factory=dict)
    capacity: int = field(init=False, default=0)
    # The last candidate built; every change to the facts goes through NodeView, which drops
    # it, so a route request rebuilds only what changed since the previous one.
    cached: routing.Candidate | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.capacity = routing.host_capacity(self.tunnel_subnet)

    @classmethod
    def from_record(cls, record: node_facts.NodeRecord) -> NodeFacts:
        facts = cls(
            node_id=record.node_id,
            state=record.state,
            public_key=record.public_key,
            endpoint=record.endpoint,
            tunnel_subnet=record.tunnel_subnet,
            tunnel_subnet_v6=record.tunnel_subnet_v6,
            tunnel_mtu=record.tunnel_mtu,
            max_clients=record.max_clients,
            bandwidth_mbps=record.bandwidth_mbps,
            country=record.country,
            region=record.region,
            open_sessions=record.open_sessions,
        )
        facts.apply_metrics(record.metrics)
        return facts

    def apply_metrics(self, metrics: Mapping[str, Any] | None) -> None:
        self.budget_left_mb = metric_number(metrics, "budget_left_mb")
        self.budget_total_mb = metric_number(metrics, "budget_total_mb")
        self.latency_ms = metric_number(metrics, "latency_ms")
        ipv6 = (metrics or {}).get("ipv6")
        self.ipv6 = ipv6 if isinstance(ipv6, bool) else None
        self.paused = (metrics or {}).get("paused") is True
        mtu = (metrics or {}).get("tunnel_mtu")
        if isinstance(mtu, int) and not isinstance(mtu, bool):
            self.tunnel_mtu = mtu
        rtts = (metrics or {}).get("relay_rtt_ms")
        self.relay_rtt_ms = (
            {str(k): float(v) for k, v in rtts.items() if isinstance(v, int | float)}
            if isinstance(rtts, dict)
            else {}
        )

    @property
    def forwards_ipv6(self) -> bool:
        """The node registered an IPv6 prefix and its last heartbeat did not say it lost IPv6."""
        return bool(self.tunnel_subnet_v6) and self.ipv6 is not False

    def candidate(self, connected: bool, replacing: bool = False) -> routing.Candidate:
        """This node as a routing candidate; ``replacing``: the caller's own session on it
        is about to be replaced, so it does not count."""
        cached = self.cached
        if cached is not None and cached.connected == connected and not replacing:
            return cached
        open_n = self.open_sessions - (1 if replacing else 0)
        candidate = routing.Candidate(
            node_id=self.node_id,
            state="paused" if self.paused and self.state == "online" else self.state,
            open_sessions=open_n,
            max_clients=self.max_clients,
            country=self.country,
            bandwidth_mbps=self.bandwidth_mbps,
            has_endpoint=self.endpoint is not None,
            connected=connected,
            free_addresses=self.capacity - open_n,
            budget_left_mb=self.budget_left_mb,
            budget_total_mb=self.budget_total_mb,
            latency_ms=self.latency_ms,
        )
        if not replacing:
            self.cached = candidate
        return candidate


class _Backwards:
    """A node id ordered backwards: of two equal ranks the higher id wins (Candidate.rank),
    and the heap below pops its smallest key first."""

    __slots__ = ("node_id",)

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def __lt__(self, other: _Backwards) -> bool:
        return self.node_id > other.node_id


# (-score, open sessions, node id backwards, push order, candidate): the smallest is the
# candidate of the highest rank.
_Entry = tuple[float, int, _Backwards, int, routing.Candidate]

# How often the takers' heap re-reads every node's link (a link that went down is seen at
# once, when its candidate comes to the top; one that came up elsewhere in a cluster, only
# here; this instance's own link changes are told by the events, NodeView.link_changed).
LINKS_CHECK_S = 0.5


class NodeView:
    def __init__(self) -> None:
        self._nodes: dict[str, NodeFacts] = {}
        # Nodes changed in memory while a reload is reading the database (None: no reload).
        self._touched: set[str] | None = None
        # The takers' heap (best_taker): every node that can take a session, by rank, each
        # entry valid while its candidate is still its node's cached one. Entries of changed
        # nodes are left behind and dropped when they come to the top; changed nodes are
        # pushed again at the next choice.
        self._ranked: list[_Entry] = []
        self._dirty: set[str] = set()
        self._rebuild = True
        self._links_checked = 0.0
        self._order = itertools.count()
        self.links_check_s = LINKS_CHECK_S

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[NodeFacts]:
        return iter(list(self._nodes.values()))

    def values(self) -> Iterable[NodeFacts]:
        """A live view: do not await while iterating it."""
        return self._nodes.values()

    def get(self, node_id: str) -> NodeFacts | None:
        return self._nodes.get(node_id)

    def _touch(self, node_id: str) -> None:
        if self._touched is not None:
            self._touched.add(node_id)
        self._dirty.add(node_id)
        facts = self._nodes.get(node_id)
        if facts is not None:
            facts.cached = None

    def upsert(self, facts: NodeFacts) -> None:
        self._touch(facts.node_id)
        self._nodes[facts.node_id] = facts

    def set_endpoint(self, node_id: str, endpoint: str | None) -> None:
        """The endpoint offered for direct mode changed (a verified port mapping)."""
        facts = self._nodes.get(node_id)
        if facts is not None:
            self._touch(node_id)
            facts.endpoint = endpoint

    def remove(self, node_id: str) -> None:
        self._touch(node_id)
        self._nodes.pop(node_id, None)

    def set_state(self, node_id: str, state: str) -> None:
        facts = self._nodes.get(node_id)
        if facts is not None:
            self._touch(node_id)
            facts.state = state

    def heartbeat(self, node_id: str, metrics: Mapping[str, Any]) -> None:
        facts = self._nodes.get(node_id)
        if facts is not None:
            self._touch(node_id)
            facts.state = NodeState.ONLINE
            facts.apply_metrics(metrics)

    def session_opened(self, node_id: str) -> None:
        facts = self._nodes.get(node_id)
        if facts is not None:
            self._touch(node_id)
            facts.open_sessions += 1

    def session_closed(self, node_id: str) -> None:
        facts = self._nodes.get(node_id)
        if facts is not None:
            self._touch(node_id)
            facts.open_sessions = max(0, facts.open_sessions - 1)

    def set_open_sessions(self, node_id: str, open_sessions: int) -> None:
        facts = self._nodes.get(node_id)
        if facts is not None:
            self._touch(node_id)
            facts.open_sessions = open_sessions

    def begin_reload(self) -> None:
        self._touched = set()

    def abort_reload(self) -> None:
        self._touched = None

    def replace_all(self, loaded: Iterable[NodeFacts]) -> None:
        """Ends a reload begun with :meth:`begin_reload`: the loaded facts replace the view,
        except for nodes changed in memory since (kept as they are)."""
        touched, self._touched = self._touched or set(), None
        fresh = {f.node_id: f for f in loaded}
        for node_id in touched:
            current = self._nodes.get(node_id)
            if current is None:
                fresh.pop(node_id, None)
            else:
                fresh[node_id] = current
        self._nodes = fresh
        self._rebuild = True

    def link_changed(self, node_id: str) -> None:
        """The node's control link came up or went down on this instance."""
        self._dirty.add(node_id)

    # --- the best node for a request that asks for nothing in particular ------------------

    def best_taker(self, connected: Callable[[str], bool]) -> routing.Candidate | None:
        """The highest-ranked candidate that can take a session: what
        ``routing.best_of`` over every node's candidate answers for a request without
        wishes, in O(log N) per choice instead of a pass over the view. Nothing here
        awaits, so the view cannot change while it runs."""
        now = time.monotonic()
        if self._rebuild or len(self._ranked) > 2 * len(self._nodes) + 64:
            self._heapify(connected)
        else:
            if now - self._links_checked >= self.links_check_s:
                self._links_checked = now
                for facts in self._nodes.values():
                    cached = facts.cached
                    if cached is not None and cached.connected != connected(facts.node_id):
                        self._dirty.add(facts.node_id)
            for node_id in self._dirty:
                changed = self._nodes.get(node_id)
                if changed is not None:
                    self._push(changed.candidate(connected(node_id)))
        self._dirty.clear()
        ranked = self._ranked
        while ranked:
            top = ranked[0][-1]
            held = self._nodes.get(top.node_id)
            if held is not None and held.cached is top and top.connected == connected(top.node_id):
                return top
            heapq.heappop(ranked)
            if held is not None:
                # Its link changed since, or a scan rebuilt its candidate (seeing another
                # link state): its current candidate goes in (a second valid entry of the
                # same candidate does no harm).
                self._push(held.candidate(connected(top.node_id)))
        return None

    def _entry(self, c: routing.Candidate) -> _Entry:
        return (-c.score, c.open_sessions, _Backwards(c.node_id), next(self._order), c)

    def _push(self, c: routing.Candidate) -> None:
        if c.can_take_any:
            heapq.heappush(self._ranked, self._entry(c))

    def _heapify(self, connected: Callable[[str], bool]) -> None:
        self._links_checked = time.monotonic()
        entries: list[_Entry] = []
        for facts in self._nodes.values():
            c = facts.candidate(connected(facts.node_id))
            if c.can_take_any:
                entries.append(self._entry(c))
        heapq.heapify(entries)
        self._ranked = entries
        self._rebuild = False


async def refresh_view(view: NodeView, db: Database) -> int:
    """Reloads the view from the database (start, and periodically: a safety net for changes
    this process did not see). Returns the number of nodes in it."""
    view.begin_reload()
    try:
        loaded = await node_facts.load_all(db)
    except BaseException:
        view.abort_reload()
        raise
    view.replace_all(NodeFacts.from_record(r) for r in loaded)
    return len(view)
