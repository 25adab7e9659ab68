"""osnet.handshakes: a handshake's age survives steps of the wall clock (NTP correcting a PC
that was 5 minutes off), and a handshake first seen is no older than the previous read."""

from __future__ import annotations

from higgs.osnet.handshakes import HandshakeClock

KEY = "peer"


class Clocks:
    def __init__(self, wall: float) -> None:
        self.wall, self.mono = wall, 1000.0

    def tick(self, s: float) -> None:
        self.wall += s
        self.mono += s


def _age(clock: HandshakeClock, c: Clocks, value: int | None) -> float | None:
    at = clock.rebase([(KEY, value)])[KEY]
    return None if at is None else c.wall - at


def test_first_read_takes_the_wall_clock_and_never_the_future() -> None:
    c = Clocks(10_000.0)
    clock = HandshakeClock(lambda: c.wall, lambda: c.mono)
    assert _age(clock, c, 9_990) == 10.0
    c2 = Clocks(10_000.0)
    fresh = HandshakeClock(lambda: c2.wall, lambda: c2.mono)
    assert _age(fresh, c2, 10_300) == 0.0  # wg's clock ahead of ours: not from the future
    assert _age(fresh, c2, None) is None


def test_a_step_of_the_wall_clock_does_not_age_a_handshake() -> None:
    c = Clocks(10_000.0)
    clock = HandshakeClock(lambda: c.wall, lambda: c.mono)
    assert _age(clock, c, 9_995) == 5.0
    c.tick(10)
    c.wall += 300  # NTP steps the clock 5 minutes forward
    assert _age(clock, c, 9_995) == 15.0  # not 315: the path is not left
    c.wall -= 600  # and 10 minutes back
    c.tick(100)
    assert _age(clock, c, 9_995) == 115.0  # not 0: a dead path still ages


def test_a_new_handshake_is_no_older_than_the_previous_read() -> None:
    c = Clocks(10_000.0)
    clock = HandshakeClock(lambda: c.wall, lambda: c.mono)
    assert _age(clock, c, None) is None
    c.tick(2)
    # wg's clock is 5 minutes behind ours (the values of a step, or of another process's
    # clock): the handshake happened within the last 2 s, whatever its stamp says.
    assert _age(clock, c, int(c.wall) - 301) == 2.0
    c.tick(3)
    assert _age(clock, c, int(c.wall) - 302) == 3.0  # another new one, within the 3 s
    c.tick(1)
    assert _age(clock, c, int(c.wall) - 303) == 4.0  # unchanged: it ages on the monotonic clock


def test_peers_gone_are_forgotten_and_new_ones_bounded() -> None:
    c = Clocks(10_000.0)
    clock = HandshakeClock(lambda: c.wall, lambda: c.mono)
    clock.rebase([("a", 9_990)])
    c.tick(4)
    got = clock.rebase([("b", 9_000)])  # b appeared since the previous read
    assert set(got) == {"b"}
    assert got["b"] == c.wall - 4.0
