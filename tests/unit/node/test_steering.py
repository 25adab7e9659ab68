"""The node's steering of an official WireGuard app (higgs.node.punch, docs/protocol.md §3.5),
against a fake WireGuard table: what it sets, and how it judges that the app followed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from higgs.common.keys import PrivateKey
from higgs.node.peers import DesiredPeer
from higgs.node.punch import PUNCH_KEEPALIVE_S, STEERED_DEAD_S, Puncher, _Punched
from higgs.protocol.control import Punch

KEY = PrivateKey.generate().public_b64()
RELAY = "198.51.100.10:40000"
APP = "203.0.113.20:53659"


@dataclass
class Row:
    public_key: str
    endpoint: str | None
    rx_bytes: int


@dataclass
class Table:
    """A peer as ``wg`` holds it; ``after_move`` says what arrives once it was moved."""

    after_move: str  # "direct": the app's packet from its address; "relay": through the relay
    endpoint: str = RELAY
    rx: int = 100
    calls: list[tuple[str, int]] = field(default_factory=list)

    def set_endpoint(
        self, public_key: str, allowed_ips: Sequence[str], endpoint: str, keepalive: int
    ) -> None:
        self.calls.append((endpoint, keepalive))
        self.endpoint = endpoint

    def remove_peer(self, public_key: str) -> None:
        raise AssertionError("steering never drops the session's keys")

    def rows(self) -> list[Row]:
        if self.endpoint == APP and self.calls[-1][1] == PUNCH_KEEPALIVE_S:
            if self.after_move == "direct":
                self.rx += 32
            elif self.after_move == "relay":
                self.endpoint, self.rx = RELAY, self.rx + 32  # WireGuard roamed us back
        return [Row(KEY, self.endpoint, self.rx)]


class Peers:
    def __init__(self) -> None:
        self.sessions = {KEY: DesiredPeer("s_1", 1, KEY, "10.77.0.2/32", False, RELAY)}

    def allowed_ips(self, peer: DesiredPeer) -> list[str]:
        return [peer.address]


def steer() -> Punch:
    return Punch(
        session_id="s_1",
        public_key=KEY,
        peer_endpoint=APP,
        nonce="0" * 32,
        at=time.time(),
        window_s=30,
        steer=True,
    )


# The watch's period (a second in the node): short here, the judgement is what is tested.
WATCH_S = 0.02


async def run(table: Table) -> Puncher:
    puncher = Puncher(51820, Peers(), table, table.rows, watch_every_s=WATCH_S)  # type: ignore[arg-type]
    started = time.monotonic()
    await puncher._steer(steer(), Peers().sessions[KEY])
    assert time.monotonic() - started < 5, "judged at the app's first packet, not the window"
    return puncher


async def test_an_app_that_roams_is_steered() -> None:
    table = Table(after_move="direct")
    puncher = await run(table)
    # Keepalive off, then on: WireGuard sends one at once (the app hears us now).
    assert table.calls == [(APP, 0), (APP, PUNCH_KEEPALIVE_S)]
    assert puncher.counters["steered"] == 1
    assert puncher.punched[KEY].how == "steered"


async def test_a_peer_being_steered_is_reported_on_the_relay_until_it_followed() -> None:
    table = Table(after_move="nothing")  # the app stays silent: judged only at the window
    puncher = Puncher(51820, Peers(), table, table.rows, watch_every_s=WATCH_S)  # type: ignore[arg-type]
    # The window is 25 watches long; the look at the table is 5 watches into it.
    message = steer().model_copy(update={"window_s": 25 * WATCH_S})
    task = asyncio.create_task(puncher._steer(message, Peers().sessions[KEY]))
    await asyncio.sleep(5 * WATCH_S)
    assert table.endpoint == APP  # wg holds the app's address...
    assert [r.endpoint for r in puncher.reported(table.rows())] == [RELAY]  # ...not reported
    await task
    assert puncher.reported(table.rows())[0].endpoint == RELAY  # (back on it)
    assert puncher.counters["steer_not_followed"] == 1


async def test_an_app_whose_nat_filters_stays_on_the_relay() -> None:
    table = Table(after_move="relay")
    puncher = await run(table)
    assert table.calls[-1] == (RELAY, 25)  # back with the relay's keepalive
    assert puncher.counters["steer_not_followed"] == 1
    assert KEY not in puncher.punched


def test_a_steered_app_is_dead_only_after_its_own_keepalives() -> None:
    puncher = Puncher(51820, Peers(), Table("direct"), list)  # type: ignore[arg-type]
    assert puncher._dead_s(_Punched("s_1", APP, "steered", 0, 0.0)) == STEERED_DEAD_S
    assert puncher._dead_s(_Punched("s_1", APP, "punched", 0, 0.0)) == puncher.dead_s


async def test_direct_peers_hear_our_new_address_at_once() -> None:
    """A direct device (endpoint learned from the app, no keepalive) gets one keepalive from
    the new address (keepalive on, then off again); a relayed peer is left alone."""
    table = Table(after_move="direct", endpoint=APP)
    relayed = PrivateKey.generate().public_b64()
    peers = Peers()
    peers.sessions[KEY] = DesiredPeer("s_1", 1, KEY, "10.77.0.2/32", False, None)
    peers.sessions[relayed] = DesiredPeer("s_2", 2, relayed, "10.77.0.3/32", False, RELAY)
    rows = [Row(KEY, APP, 1), Row(relayed, RELAY, 1)]
    puncher = Puncher(51820, peers, table, lambda: rows)  # type: ignore[arg-type]
    assert await puncher.address_changed() == 1
    assert table.calls == [(APP, 0), (APP, PUNCH_KEEPALIVE_S), (APP, 0)]
