"""PathWatch: when a direct or punched path is provoked and when it is declared dead, and when
a quiet tunnel gets a new handshake (a node restarted after a crash) -- never a merely idle one."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from higgs.client.daemon import REHANDSHAKE_AFTER_S, REHANDSHAKE_EVERY_S
from higgs.client.punch import KEEPALIVE_BYTES, PathWatch
from higgs.client.settings import PATH_DEAD_S


def test_growing_counter_is_ok_and_silence_provokes_then_kills() -> None:
    watch = PathWatch(dead_s=6.0, provoke_after_s=1.5)
    assert watch.observe(100, 0.0) == "ok"
    assert watch.observe(200, 1.0) == "ok"
    assert watch.observe(200, 2.0) == "ok"  # 1 s quiet
    assert watch.observe(200, 3.0) == "provoke"
    assert watch.observe(200, 7.0) == "provoke"  # 6 s quiet: not yet more than dead_s
    assert watch.observe(200, 7.1) == "dead"


def test_an_answer_to_the_provocation_resets_the_clock() -> None:
    watch = PathWatch(dead_s=6.0, provoke_after_s=1.5)
    watch.reset(10, 0.0)
    assert watch.observe(10, 5.0) == "provoke"
    assert watch.observe(50, 5.5) == "ok"
    assert watch.observe(50, 11.0) == "provoke"
    assert watch.observe(50, 11.6) == "dead"


def test_by_default_a_silent_path_is_dead_after_4_s() -> None:
    """Two of the node's 2 s keepalives missed; short enough that with the handshake after it
    the session is back on the relay within issue 12's 10 s."""
    watch = PathWatch()
    assert watch.dead_s == PATH_DEAD_S == 4.0
    watch.reset(10, 100.0)
    assert watch.observe(10, 101.0) == "ok"
    assert watch.observe(10, 102.0) == "provoke"
    assert watch.observe(10, 104.0) == "provoke"
    assert watch.observe(10, 104.1) == "dead"


def _restart_watch(*, leaves: bool = False) -> PathWatch:
    # As the daemon builds it (higgs.client.daemon._path_loop); a relay path unless ``leaves``.
    return PathWatch(
        leaves=leaves,
        rehandshake_after_s=REHANDSHAKE_AFTER_S,
        rehandshake_every_s=REHANDSHAKE_EVERY_S,
    )


def _verdicts(watch: PathWatch, ticks: range, rx: int, tx: Callable[[int], int]) -> list[str]:
    return [watch.observe(rx, float(t), tx(t)) for t in ticks]


def test_unanswered_traffic_gets_a_handshake_after_2_5_s_then_every_second() -> None:
    """A node restarted after a crash: our packets go out (tx grows), nothing comes back."""
    watch = _restart_watch()
    watch.reset(100, 0.0, 1000)
    said = {t: watch.observe(100, t, 1000 + int(t * 10) * 84) for t in (1.0, 2.0, 2.4)}
    assert "rehandshake" not in said.values()
    at = [t for t in range(3, 13) if watch.observe(100, float(t), 5000 + t * 840) == "rehandshake"]
    assert at == [3, 4, 5, 6, 7, 8, 9, 11]  # six fast ones (6 s), then backing off


def test_the_restarted_node_answers_and_the_next_outage_starts_afresh() -> None:
    watch = _restart_watch()
    watch.reset(100, 0.0, 1000)
    assert _verdicts(watch, range(1, 5), 100, lambda t: 1000 + t * 840).count("rehandshake") == 2
    assert watch.observe(400, 4.5, 5000) == "ok"  # its handshake response
    # Quiet again with traffic unanswered: 2.5 s quiet first, not the 1 s of the last outage.
    got = _verdicts(watch, range(5, 9), 400, lambda t: 5000 + t * 840)
    assert got.index("rehandshake") == 2  # at 7.0 s, 2.5 s after the last answer


def test_backing_off_doubles_up_to_5_s() -> None:
    watch = _restart_watch()
    watch.reset(100, 0.0, 0)
    at = [t for t in range(1, 60) if watch.observe(100, float(t), t * 840) == "rehandshake"]
    assert at[:6] == [3, 4, 5, 6, 7, 8]
    gaps = [b - a for a, b in itertools.pairwise(at[5:])]
    assert gaps[:3] == [1, 2, 4]
    assert set(gaps[3:]) == {5}


def test_an_idle_tunnel_is_never_rehandshaken() -> None:
    """Nothing sent but our own 25 s keepalives, no provocation sent (a route without a
    resolver address): however long it is quiet, no new handshake."""
    watch = _restart_watch()
    watch.reset(100, 0.0, 1000)
    got = _verdicts(watch, range(1, 300), 100, lambda t: 1000 + KEEPALIVE_BYTES * (t // 25))
    assert "rehandshake" not in got
    assert watch.rehandshakes == 0


def test_an_idle_tunnel_whose_provocations_are_answered_is_never_rehandshaken() -> None:
    """The daemon pings the node's resolver when the path is quiet; a live node answers."""
    watch = _restart_watch()
    rx, tx = 100, 1000
    watch.reset(rx, 0.0, tx)
    pinged_at: float | None = None
    for t in range(1, 120):
        now = float(t)
        if pinged_at is not None and now - pinged_at >= 1.0:
            rx, pinged_at = rx + 84, None  # the echo reply came back within the second
        verdict = watch.observe(rx, now, tx)
        assert verdict != "rehandshake", t
        if verdict == "provoke":
            tx += 84
            watch.sent(now)
            pinged_at = now
    assert watch.provoked > 10


def test_an_unanswered_provocation_alone_is_owed_an_answer() -> None:
    """Without the tx counter: the provoking ping, told with sent(), unanswered."""
    watch = _restart_watch()
    watch.reset(100, 0.0)
    assert watch.observe(100, 1.0) == "ok"
    assert watch.observe(100, 2.0) == "provoke"
    watch.sent(2.0)
    assert watch.observe(100, 2.4) == "provoke"  # not yet 2.5 s quiet
    assert watch.observe(100, 3.0) == "rehandshake"


def test_traffic_just_sent_after_a_long_idle_gets_time_for_its_answer() -> None:
    """Idle for a minute, then the user sends: the answer is on its way, no handshake for it."""
    watch = _restart_watch()
    watch.reset(100, 0.0, 1000)
    assert "rehandshake" not in _verdicts(watch, range(1, 60), 100, lambda t: 1000)
    assert watch.observe(100, 60.0, 1500) != "rehandshake"  # sent within the last second
    assert watch.observe(400, 61.0, 1600) == "ok"  # answered
    # The same, but the answer never comes: the next tick re-initiates.
    watch.reset(400, 61.0, 1600)
    assert "rehandshake" not in _verdicts(watch, range(62, 70), 400, lambda t: 1600)
    assert watch.observe(400, 70.0, 2000) != "rehandshake"
    assert watch.observe(400, 71.0, 2100) == "rehandshake"


def test_without_rehandshakes_configured_none_ever() -> None:
    watch = PathWatch(dead_s=600.0)
    watch.reset(100, 0.0, 0)
    assert "rehandshake" not in _verdicts(watch, range(1, 100), 100, lambda t: t * 840)


def test_a_direct_path_is_left_after_dead_s_even_while_rehandshaking() -> None:
    """Issue 12: a dead direct path must be back on the relay within 10 s; the re-handshakes
    must not hold off its 4 s rule."""
    watch = _restart_watch(leaves=True)
    watch.reset(100, 0.0, 0)
    got = _verdicts(watch, range(1, 8), 100, lambda t: t * 840)
    assert got[2:4] == ["rehandshake", "rehandshake"]  # at 3 and 4 s
    assert got[4] == "dead"  # at 5 s: more than PATH_DEAD_S (4 s) quiet


def test_a_fresh_peer_counts_from_zero() -> None:
    """A re-handshake removes and re-adds the peer: its counters start again from 0, so the
    node's answer is 92 bytes received, not the old total exceeded."""
    watch = _restart_watch()
    watch.reset(500_000, 0.0, 900_000)
    verdicts = _verdicts(watch, range(1, 4), 500_000, lambda t: 900_000 + t * 840)
    assert verdicts[-1] == "rehandshake"  # at 3 s; the peer is set afresh
    assert watch.observe(0, 4.0, 148 + 840) == "rehandshake"  # nothing back yet: the next one
    assert watch.observe(92, 5.0, 2 * 148 + 1680) == "ok"  # its handshake response
    assert watch.observe(92 + 840, 6.0, 2 * 148 + 2520) == "ok"
    assert watch.rehandshakes == 2


def test_a_busy_tunnel_is_not_rehandshaken_again_after_one_quiet_spell() -> None:
    """The CI failure of 2026-12-03 (docs/faults.md): after one outage the fresh peer's
    counters were compared with the old peer's, so a tunnel carrying pings got a new peer every
    few seconds, losing what was in flight each time."""
    watch = _restart_watch()
    watch.reset(50_000, 0.0, 90_000)
    verdicts = _verdicts(watch, range(1, 4), 50_000, lambda t: 90_000 + t * 840)
    assert verdicts[-1] == "rehandshake"  # the outage; the peer is set afresh
    later = [watch.observe(1_000 * t, float(t), 2_000 * t) for t in range(4, 30)]
    assert set(later) == {"ok"}  # pings on the new peer, both ways, for 26 s
    assert watch.rehandshakes == 1
