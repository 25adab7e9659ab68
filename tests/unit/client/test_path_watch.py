"""PathWatch: when a direct or punched path is provoked and when it is declared dead."""

from __future__ import annotations

from higgs.client.punch import PathWatch
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


def test_a_quiet_path_gets_a_new_handshake_every_so_often() -> None:
    watch = PathWatch(dead_s=6.0, provoke_after_s=1.5, rehandshake_every_s=2.5)
    assert watch.observe(100, 0.0) == "ok"
    assert watch.observe(100, 2.0) == "provoke"
    assert watch.observe(100, 3.0) == "rehandshake"
    assert watch.observe(100, 4.0) == "provoke"
    assert watch.observe(100, 5.5) == "rehandshake"
    assert watch.observe(100, 6.5) == "dead"
    # Something arrived: quiet again from now on, the next initiation 2.5 s later.
    assert watch.observe(300, 7.0) == "ok"
    assert watch.observe(300, 9.0) == "provoke"
    assert watch.observe(300, 9.6) == "rehandshake"


def test_a_peer_set_afresh_restarts_its_counter_without_looking_silent() -> None:
    """A rehandshake re-creates the peer, so wg's rx counter starts again from 0: traffic on
    the new peer is activity, not a silence to answer with yet another new peer (which
    dropped a ping every few seconds on a busy UDP relay path)."""
    watch = PathWatch(dead_s=6.0, provoke_after_s=1.5, rehandshake_every_s=2.5)
    assert watch.observe(50_000, 0.0) == "ok"
    assert watch.observe(50_000, 2.0) == "provoke"
    assert watch.observe(50_000, 3.0) == "rehandshake"  # the peer is re-created: rx → 0
    for t in range(4, 30):
        assert watch.observe(1_000 * t, float(t)) == "ok"  # pings flow on the new peer


def test_a_peer_set_afresh_that_hears_nothing_stays_silent() -> None:
    watch = PathWatch(dead_s=6.0, provoke_after_s=1.5, rehandshake_every_s=2.5)
    assert watch.observe(50_000, 0.0) == "ok"
    assert watch.observe(50_000, 2.0) == "provoke"
    assert watch.observe(50_000, 3.0) == "rehandshake"
    assert watch.observe(0, 4.0) == "provoke"  # the new peer's counter, nothing arrived
    assert watch.observe(0, 5.5) == "rehandshake"
    assert watch.observe(0, 6.5) == "dead"
