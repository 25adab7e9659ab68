"""Tunnel MTU arithmetic and the path-MTU probe's search, against a simulated path that
answers with the text real ping prints (captured from iputils 20221126 in namespaces)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from higgs.osnet.errors import CommandError
from higgs.osnet.mtu import (
    MAX_TUNNEL_MTU,
    MIN_TUNNEL_MTU,
    MtuError,
    ping_argv,
    probe_path_mtu,
    tunnel_mtu,
)
from higgs.osnet.runner import DEFAULT_TIMEOUT, CommandResult

# -- tunnel_mtu ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uplink", "paths", "expected", "limited_by"),
    [
        (1500, ("udp4",), 1440 - 20, "udp4"),  # 1500 - 60 = 1440, above the 1420 ceiling
        (1500, ("udp6",), 1420, "udp6"),  # 1500 - 80: WireGuard's own default
        (1460, ("udp4",), 1400, "udp4"),
        (1460, ("udp6",), 1380, "udp6"),
        (1460, ("udp4", "udp6", "relay"), 1380, "udp6"),  # one MTU must fit every path
        (1460, ("relay",), 1400, "relay"),  # the relay uses the IPv4 figure (see module doc)
        (1492, ("udp4",), 1420, "udp4"),  # PPPoE: 1432 capped
        (1492, ("udp6",), 1412, "udp6"),
        (9000, ("udp4", "udp6"), MAX_TUNNEL_MTU, "udp6"),  # jumbo frames: still 1420
        (1300, ("udp4",), MIN_TUNNEL_MTU, "udp4"),  # 1240 < 1280: IPv6 needs 1280
        (1280, ("udp6",), MIN_TUNNEL_MTU, "udp6"),
    ],
)
def test_tunnel_mtu_from_uplink_and_paths(
    uplink: int, paths: tuple[str, ...], expected: int, limited_by: str
) -> None:
    decision = tunnel_mtu(uplink, paths)  # type: ignore[arg-type]
    assert decision.mtu == expected
    assert decision.limited_by == limited_by
    assert MIN_TUNNEL_MTU <= decision.mtu <= MAX_TUNNEL_MTU


def test_a_smaller_discovered_path_mtu_wins_over_the_uplink() -> None:
    decision = tunnel_mtu(1500, ("udp4",), path_mtu=1400)
    assert decision.mtu == 1340
    assert "path MTU 1400" in decision.reason
    # A probe can only find less than the uplink; a larger figure is ignored.
    assert tunnel_mtu(1450, ("udp4",), path_mtu=1500).mtu == 1390


def test_the_reason_says_when_the_value_was_clamped() -> None:
    assert "capped at 1420" in tunnel_mtu(1500).reason
    low = tunnel_mtu(1300, ("udp6",))
    assert "below 1280" in low.reason
    assert "fragmented" in low.reason
    assert tunnel_mtu(1400).reason == "uplink MTU 1400 - 60 (udp4) = 1340"


@pytest.mark.parametrize("bad", [0, 67, 70000, -1, True, "1500", 1500.0])
def test_impossible_uplink_mtus_are_refused_by_name(bad: object) -> None:
    with pytest.raises(MtuError, match="uplink MTU"):
        tunnel_mtu(bad)  # type: ignore[arg-type]


def test_paths_must_be_known_and_not_empty() -> None:
    with pytest.raises(MtuError, match="at least one path"):
        tunnel_mtu(1500, ())
    with pytest.raises(MtuError, match="unknown path 'tcp'"):
        tunnel_mtu(1500, ("tcp",))  # type: ignore[arg-type]
    with pytest.raises(MtuError, match="path MTU"):
        tunnel_mtu(1500, path_mtu=10)


# -- ping_argv -----------------------------------------------------------------------------


def test_ping_argv_sends_a_packet_of_exactly_the_size_with_dont_fragment() -> None:
    assert ping_argv("192.0.2.10", 1400) == [
        "ping", "-4", "-n", "-M", "do", "-c", "1", "-W", "1", "-s", "1372", "192.0.2.10",
    ]  # fmt: skip
    assert ping_argv("2001:db8::10", 1400, wait_s=2)[-3:] == ["-s", "1352", "2001:db8::10"]
    assert ping_argv("2001:db8::10", 1400)[1] == "-6"


@pytest.mark.parametrize("bad", ["example.test", "", "0.0.0.0", "224.0.0.1", "::", "1.2.3"])
def test_the_probe_target_must_be_a_unicast_address(bad: str) -> None:
    with pytest.raises(MtuError, match="probe target"):
        ping_argv(bad, 1400)
    with pytest.raises(MtuError, match="probe target"):
        probe_path_mtu(bad, SimulatedPath(1500))


# -- probe_path_mtu against a simulated path -----------------------------------------------


@dataclass
class SimulatedPath:
    """A Runner that answers ``ping -M do`` like a real path whose narrowest hop is
    ``path_mtu``: replies for packets that fit; beyond, the router's ICMP error the first
    time and the kernel's local error afterwards (it has cached the MTU), or silence when the
    path is a black hole. The first ``lose`` pings that would fit get no reply."""

    path_mtu: int
    local_mtu: int = 1500
    icmp: bool = True
    lose: int = 0
    unreachable: bool = False
    no_ping: bool = False  # the host has no ping binary
    sizes: list[int] = field(default_factory=list)
    _cached: int | None = None

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult:
        assert argv[:6] == ["ping", argv[1], "-n", "-M", "do", "-c"], argv
        v6 = argv[1] == "-6"
        size = int(argv[argv.index("-s") + 1]) + (48 if v6 else 28)
        self.sizes.append(size)
        target = argv[-1]
        head = f"PING {target} ({target}) {size - 28}({size}) bytes of data.\n"
        stats = "\n--- {t} ping statistics ---\n1 packets transmitted, {r} received, {e}"
        if self.no_ping:
            raise CommandError(argv, None, "executable not found: ping")
        if self.unreachable:
            return CommandResult(tuple(argv), 2, "", "ping: connect: Network is unreachable\n")
        limit = min(self.local_mtu, self._cached or self.local_mtu)
        if size > limit:
            sep = ": " if v6 else "="
            err = f"ping: local error: message too long, mtu{sep}{limit}\n"
            out = head + stats.format(t=target, r=0, e="+1 errors, 100% packet loss, time 0ms\n")
            return CommandResult(tuple(argv), 1, out, err)
        if size > self.path_mtu:
            if not self.icmp:
                out = head + stats.format(t=target, r=0, e="100% packet loss, time 0ms\n")
                return CommandResult(tuple(argv), 1, out, "")
            self._cached = self.path_mtu
            line = (
                f"From 2001:db8:1::2 icmp_seq=1 Packet too big: mtu={self.path_mtu}\n"
                if v6
                else f"From 203.0.113.1 icmp_seq=1 Frag needed and DF set (mtu = {self.path_mtu})\n"
            )
            out = head + line + stats.format(t=target, r=0, e="+1 errors, 100% packet loss\n")
            return CommandResult(tuple(argv), 1, out, "")
        if self.lose > 0:
            self.lose -= 1
            out = head + stats.format(t=target, r=0, e="100% packet loss, time 0ms\n")
            return CommandResult(tuple(argv), 1, out, "")
        reply = f"{size - 20} bytes from {target}: icmp_seq=1 ttl=63 time=0.148 ms\n"
        out = head + reply + stats.format(t=target, r=1, e="0% packet loss, time 0ms\n")
        return CommandResult(tuple(argv), 0, out, "")

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> int:
        raise AssertionError("the probe starts no daemon")


@pytest.mark.parametrize("path_mtu", [1400, 1280, 1499, 1000, 577])
def test_probe_finds_the_narrowest_hop_when_routers_send_icmp(path_mtu: int) -> None:
    path = SimulatedPath(path_mtu)
    assert probe_path_mtu("192.0.2.10", path) == path_mtu
    # The router's hint ends the search quickly: low, max, the hint, one byte more (unless
    # that is the maximum, already known not to fit).
    expected = [576, 1500, path_mtu] + ([path_mtu + 1] if path_mtu + 1 < 1500 else [])
    assert path.sizes == expected


def test_probe_of_a_clean_path_returns_the_maximum_in_two_pings() -> None:
    path = SimulatedPath(1500)
    assert probe_path_mtu("192.0.2.10", path, max_mtu=1500) == 1500
    assert path.sizes == [576, 1500]


@pytest.mark.parametrize("path_mtu", [1400, 1281, 1492])
def test_probe_bisects_a_black_hole_path_where_no_icmp_comes_back(path_mtu: int) -> None:
    path = SimulatedPath(path_mtu, icmp=False)
    assert probe_path_mtu("192.0.2.10", path, attempts=1) == path_mtu
    assert len(path.sizes) <= 2 + 10  # log2(1500 - 576) bisection steps


def test_probe_is_bounded_even_over_a_huge_range() -> None:
    path = SimulatedPath(1400, local_mtu=65535, icmp=False)
    assert probe_path_mtu("192.0.2.10", path, max_mtu=65535, attempts=1) == 1400
    assert len(path.sizes) <= 20


def test_a_lost_first_ping_is_retried_not_taken_for_an_unreachable_target() -> None:
    path = SimulatedPath(1400, lose=1)
    assert probe_path_mtu("192.0.2.10", path) == 1400
    assert path.sizes[:2] == [576, 576]


def test_an_unanswered_target_gives_none() -> None:
    silent = SimulatedPath(1400, lose=10)
    assert probe_path_mtu("192.0.2.10", silent) is None
    assert silent.sizes == [576, 576]  # tried `attempts` times at the minimum, then gave up
    assert probe_path_mtu("192.0.2.10", SimulatedPath(1400, unreachable=True)) is None


def test_ipv6_probe_starts_at_1280_and_reads_the_packet_too_big_hint() -> None:
    path = SimulatedPath(1400)
    assert probe_path_mtu("2001:db8::10", path) == 1400
    assert path.sizes == [1280, 1500, 1400, 1401]


def test_probe_never_reports_more_than_the_local_interface_allows() -> None:
    # max_mtu above the local MTU: the kernel refuses with "mtu=1450", which the probe follows.
    path = SimulatedPath(9000, local_mtu=1450)
    assert probe_path_mtu("192.0.2.10", path, max_mtu=9000) == 1450


def test_missing_ping_gives_none_not_a_crash() -> None:
    assert probe_path_mtu("192.0.2.10", SimulatedPath(1400, no_ping=True)) is None


def test_probe_bounds_are_checked() -> None:
    with pytest.raises(MtuError, match="above the maximum"):
        probe_path_mtu("192.0.2.10", SimulatedPath(1400), min_mtu=1500, max_mtu=1400)
    with pytest.raises(MtuError, match="probe maximum"):
        probe_path_mtu("192.0.2.10", SimulatedPath(1400), max_mtu=0)
