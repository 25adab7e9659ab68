"""NodeView.best_taker, the route choice's heap, against the pass it replaced: after any
sequence of the view's changes (heartbeats, sessions opened and closed, states, pauses,
links up and down, removals, new nodes, reloads), it names the same node as
``routing.best_of`` over every node's candidate."""

from __future__ import annotations

import random

import pytest

from higgs.server.services import routing
from higgs.server.services.nodeview import NodeFacts, NodeView
from higgs.server.store.states import NodeState


def _facts(i: int, rng: random.Random) -> NodeFacts:
    return NodeFacts(
        node_id=f"n_{i:016x}",
        state=NodeState.ONLINE,
        public_key=f"k{i}",
        endpoint=None,
        tunnel_subnet="10.9.0.0/29",  # 5 client addresses: nodes fill up in these runs
        tunnel_mtu=1420,
        max_clients=rng.choice([2, 4, 8]),
        bandwidth_mbps=100.0,
        country="DE",
        region=None,
        # Equal scores are common (no metrics yet): the node id decides, as in Candidate.rank.
        latency_ms=rng.choice([None, 10.0, 20.0]),
    )


def _scan(view: NodeView, connected: set[str]) -> routing.Candidate | None:
    candidates = [f.candidate(f.node_id in connected) for f in view.values()]
    return routing.best_of(candidates, routing.RouteWish())


@pytest.mark.parametrize("seed", range(6))
def test_best_taker_agrees_with_a_pass_over_every_node(seed: int) -> None:
    rng = random.Random(seed)
    view = NodeView()
    view.links_check_s = 0.0 if seed % 2 else 3600.0  # links re-read each time, or told
    connected: set[str] = set()
    next_id = 0
    for _ in range(12):
        view.upsert(_facts(next_id, rng))
        next_id += 1
    for step in range(1500):
        ids = [f.node_id for f in view.values()]
        op = rng.randrange(10)
        node = rng.choice(ids) if ids else None
        if op == 0 or node is None:
            view.upsert(_facts(next_id, rng))
            next_id += 1
        elif op == 1:
            view.heartbeat(
                node, {"latency_ms": rng.choice([5, 10, 20, 80]), "paused": rng.random() < 0.1}
            )
        elif op in (2, 3):
            view.session_opened(node)
        elif op == 4:
            view.session_closed(node)
        elif op == 5:
            view.set_state(node, rng.choice([NodeState.ONLINE, NodeState.OFFLINE]))
        elif op == 6:
            connected.symmetric_difference_update({node})
            if view.links_check_s:  # the events tell the view of this instance's links
                view.link_changed(node)
        elif op == 7 and rng.random() < 0.2:
            view.remove(node)
        elif op == 8 and rng.random() < 0.05:  # the periodic reload: new facts objects
            view.begin_reload()
            view.replace_all(
                NodeFacts(**{k: getattr(f, k) for k in _FIELDS}) for f in view.values()
            )
        else:
            view.set_open_sessions(node, rng.randrange(0, 3))
        best = view.best_taker(lambda n: n in connected)
        expected = _scan(view, connected)
        assert (best.node_id if best else None) == (expected.node_id if expected else None), step
        if best is not None:
            assert best == expected


_FIELDS = (
    *("node_id", "state", "public_key", "endpoint", "tunnel_subnet", "tunnel_mtu"),
    *("max_clients", "bandwidth_mbps", "country", "region", "latency_ms", "open_sessions"),
    "paused",
)


def test_the_heap_stays_bounded_by_the_view() -> None:
    rng = random.Random(1)
    view = NodeView()
    for i in range(50):
        view.upsert(_facts(i, rng))
    for _ in range(5000):
        view.heartbeat(f"n_{rng.randrange(50):016x}", {"latency_ms": rng.randrange(100)})
        view.best_taker(lambda n: False)
    assert len(view._ranked) <= 2 * 50 + 64 + 1
