"""The node's way back onto the relay after a punched path died (higgs.node.punch): the peer
is re-added (a fresh handshake at once) and, while nothing comes back, re-added again after
REHANDSHAKE_AFTER_S rather than at WireGuard's own retry 5 s later; at most REHANDSHAKES."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from higgs.common.keys import PrivateKey
from higgs.node.peers import DesiredPeer
from higgs.node.punch import (
    DEAD_S,
    PUNCH_KEEPALIVE_S,
    REHANDSHAKE_AFTER_S,
    REHANDSHAKES,
    RELAY_KEEPALIVE_S,
    Puncher,
    _Punched,
)

KEY = PrivateKey.generate().public_b64()
RELAY = "198.51.100.10:40000"


@dataclass
class Row:
    public_key: str
    endpoint: str | None
    rx_bytes: int


@dataclass
class Table:
    rx: int = 5000
    endpoint: str = RELAY
    calls: list[str] = field(default_factory=list)

    def set_endpoint(
        self, public_key: str, allowed_ips: Sequence[str], endpoint: str, keepalive: int
    ) -> None:
        self.calls.append(f"set {endpoint} {keepalive}")
        self.endpoint = endpoint

    def remove_peer(self, public_key: str) -> None:
        self.calls.append("remove")
        self.rx = 0  # a re-added peer counts from zero

    def rows(self) -> list[Row]:
        return [Row(KEY, self.endpoint, self.rx)]


class Peers:
    def __init__(self) -> None:
        self.sessions = {KEY: DesiredPeer("s_1", 1, KEY, "10.77.0.2/32", False, RELAY)}

    def allowed_ips(self, peer: DesiredPeer) -> list[str]:
        return [peer.address]


def rows(table: Table) -> dict[str, Row]:
    return {r.public_key: r for r in table.rows()}


def test_a_dead_path_is_declared_within_two_missed_keepalives() -> None:
    # Short enough for the 10 s budget (a handshake still follows), yet two keepalives missed.
    assert 2 * PUNCH_KEEPALIVE_S <= DEAD_S <= 5.0


async def test_silence_after_the_fresh_handshake_brings_another_then_gives_up() -> None:
    table = Table()
    puncher = Puncher(51820, Peers(), table, table.rows)  # type: ignore[arg-type]
    peer = Peers().sessions[KEY]
    await puncher._back_to_relay(peer, rehandshake=True)
    assert table.calls == ["remove", f"set {RELAY} {RELAY_KEEPALIVE_S}"]
    sent = puncher.rejoining[KEY].sent_at
    await puncher._check_rejoining(rows(table), sent + REHANDSHAKE_AFTER_S - 0.1)
    assert len(table.calls) == 2  # not yet
    now = sent
    for n in range(REHANDSHAKES):
        now += REHANDSHAKE_AFTER_S + 0.1
        await puncher._check_rejoining(rows(table), now)
        assert table.calls.count("remove") == 2 + n
    now += REHANDSHAKE_AFTER_S + 0.1
    await puncher._check_rejoining(rows(table), now)
    assert table.calls.count("remove") == 1 + REHANDSHAKES  # WireGuard retries from here on
    assert KEY not in puncher.rejoining
    assert puncher.counters["relay_rehandshake"] == REHANDSHAKES


async def test_a_client_heard_through_the_relay_ends_it() -> None:
    table = Table()
    puncher = Puncher(51820, Peers(), table, table.rows)  # type: ignore[arg-type]
    await puncher._back_to_relay(Peers().sessions[KEY], rehandshake=True)
    sent = puncher.rejoining[KEY].sent_at
    table.rx = 92  # the handshake response (and a keepalive) came through the relay
    await puncher._check_rejoining(rows(table), sent + REHANDSHAKE_AFTER_S + 1)
    assert KEY not in puncher.rejoining
    assert table.calls.count("remove") == 1


async def test_a_peer_that_only_roamed_back_is_not_re_added() -> None:
    table = Table()
    puncher = Puncher(51820, Peers(), table, table.rows)  # type: ignore[arg-type]
    await puncher._back_to_relay(Peers().sessions[KEY])  # the client came back by the relay
    assert table.calls == [f"set {RELAY} {RELAY_KEEPALIVE_S}"]
    assert puncher.rejoining == {}


async def test_a_punched_peer_set_afresh_is_not_taken_for_silent() -> None:
    """A punched peer the node set again (a sync re-creates it) counts from zero: the bytes
    it receives after that are traffic, not silence until they pass the old total."""
    direct = "203.0.113.7:51820"
    table = Table(rx=5000, endpoint=direct)
    puncher = Puncher(51820, Peers(), table, table.rows)  # type: ignore[arg-type]
    t0 = 1000.0
    puncher.punched[KEY] = _Punched("s_1", direct, "punched", 5000, t0)
    table.rx = 148  # re-created, and the client's packets keep coming
    await puncher._check_punched(rows(table), t0 + 1.0)
    table.rx = 296
    await puncher._check_punched(rows(table), t0 + DEAD_S)
    await puncher._check_punched(rows(table), t0 + DEAD_S + 0.5)
    assert KEY in puncher.punched, "a working direct path was given up"
    assert puncher.counters["punch_lost"] == 0
    # Silence after that is still silence.
    await puncher._check_punched(rows(table), t0 + 2 * DEAD_S + 1.0)
    assert KEY not in puncher.punched
    assert puncher.counters["punch_lost"] == 1
