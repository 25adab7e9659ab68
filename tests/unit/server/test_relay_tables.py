"""The relay's authorization tables without sockets: who may attach, which channel a session
owns, what a closed session leaves behind, and the traffic totals."""

from __future__ import annotations

import pytest

from higgs.server.relay.tables import RelayTables, SessionEntry


def test_a_node_attaches_only_with_its_current_token() -> None:
    t = RelayTables()
    node = t.allow_node("n_1", "tok-a")
    assert t.node_by_token("tok-a") is node
    # Registering again issues a new token: the old one stops working, the entry stays.
    assert t.allow_node("n_1", "tok-b") is node
    assert t.node_by_token("tok-a") is None
    assert t.node_by_token("tok-b") is node


def test_forgetting_a_node_revokes_its_token_and_drops_an_idle_entry() -> None:
    t = RelayTables()
    t.allow_node("n_1", "tok")
    forgotten = t.forget_node("n_1")
    assert forgotten is not None
    assert forgotten.token_hash is None
    assert t.node_by_token("tok") is None
    assert "n_1" not in t.nodes
    assert t.forget_node("n_1") is None  # unknown: nothing to do


def test_a_forgotten_node_with_open_sessions_keeps_its_entry() -> None:
    t = RelayTables()
    t.allow_node("n_1", "tok")
    t.open_session("s_1", 7, "n_1", "rt")
    t.forget_node("n_1")
    assert t.nodes["n_1"].channels[7].session_id == "s_1"
    # The last session closing releases the entry.
    t.close_session("s_1", "node_stopped", now=1.0)
    assert "n_1" not in t.nodes


def test_a_session_owns_one_channel_of_one_node() -> None:
    t = RelayTables()
    s = t.open_session("s_1", 7, "n_1", "rt-1")
    assert t.session_by_token("rt-1") is s
    assert t.nodes["n_1"].channels == {7: s}
    with pytest.raises(ValueError, match="channel 7 of node n_1 is used by s_1"):
        t.open_session("s_2", 7, "n_1", "rt-2")
    with pytest.raises(ValueError, match="already open on another channel"):
        t.open_session("s_1", 8, "n_1", "rt-1")
    # The same session again (a server restart re-admits it) only swaps its token.
    assert t.open_session("s_1", 7, "n_1", "rt-new") is s
    assert t.session_by_token("rt-1") is None
    assert t.session_by_token("rt-new") is s


def test_a_closed_session_is_remembered_with_its_reason_and_counters() -> None:
    t = RelayTables()
    s = t.open_session("s_1", 7, "n_1", "rt")
    s.up_datagrams, s.up_bytes, s.down_datagrams, s.down_bytes = 2, 200, 3, 300
    closed = t.close_session("s_1", "expired", now=10.0)
    assert closed is s
    assert s.closed
    assert s.close_reason == "expired"
    assert t.close_session("s_1", "expired", now=11.0) is None  # once
    assert "s_1" not in t.sessions
    assert t.nodes.get("n_1") is None  # no token, no link, no channel: nothing left
    # Its token still upgrades (to be told session_closed), its counters still answer.
    assert t.session_by_token("rt") is s
    assert t.counters("s_1") == (5, 500)
    assert t.counters("s_unknown") == (0, 0)


def test_closed_memory_is_bounded_oldest_first() -> None:
    t = RelayTables(closed_memory=2)
    for i in range(3):
        t.open_session(f"s_{i}", i + 1, "n_1", f"rt-{i}")
        t.close_session(f"s_{i}", "client_closed", now=0.0)
    assert t.session_by_token("rt-0") is None
    assert t.counters("s_0") == (0, 0)
    assert t.session_by_token("rt-1") is not None
    assert t.session_by_token("rt-2") is not None


def test_a_just_closed_channel_is_remembered_for_its_ttl_then_forgotten() -> None:
    t = RelayTables(closed_channel_ttl_s=120.0)
    t.allow_node("n_1", "tok")
    t.open_session("s_1", 7, "n_1", "rt")
    t.close_session("s_1", "expired", now=1000.0)
    node = t.nodes["n_1"]
    assert 7 in node.closed_channels
    t.expire_closed_channels(now=1119.0)
    assert 7 in node.closed_channels
    t.expire_closed_channels(now=1121.0)
    assert 7 not in node.closed_channels


def test_reopening_a_closed_channel_clears_its_memory() -> None:
    t = RelayTables()
    t.allow_node("n_1", "tok")
    t.open_session("s_1", 7, "n_1", "rt-1")
    t.close_session("s_1", "expired", now=1.0)
    t.open_session("s_2", 7, "n_1", "rt-2")
    assert 7 not in t.nodes["n_1"].closed_channels


def _traffic(s: SessionEntry, up: int, down: int) -> None:
    s.up_datagrams += up
    s.up_bytes += up * 100
    s.down_datagrams += down
    s.down_bytes += down * 100


def test_totals_add_open_sessions_to_closed_ones() -> None:
    t = RelayTables()
    a = t.open_session("s_a", 1, "n_1", "rt-a")
    b = t.open_session("s_b", 2, "n_1", "rt-b")
    _traffic(a, 1, 2)
    _traffic(b, 10, 20)
    assert t.totals() == (11, 1100, 22, 2200)
    t.close_session("s_a", "expired", now=0.0)
    _traffic(b, 1, 0)
    assert t.totals() == (12, 1200, 22, 2200)  # the closed session's traffic is not lost


def test_activity_reports_each_session_once_per_change() -> None:
    t = RelayTables()
    a = t.open_session("s_a", 1, "n_1", "rt-a")
    t.open_session("s_b", 2, "n_1", "rt-b")
    assert t.active_sessions() == []
    _traffic(a, 1, 0)
    assert t.active_sessions() == ["s_a"]
    assert t.active_sessions() == []


def test_release_keeps_a_node_that_still_has_a_token() -> None:
    t = RelayTables()
    node = t.allow_node("n_1", "tok")
    t.release_node(node)
    assert t.nodes["n_1"] is node
