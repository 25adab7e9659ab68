from __future__ import annotations

import pytest

from higgs.common.relay_ports import DEFAULT_COOLDOWN_S, PortRange, pick_port


def test_picks_the_lowest_free_port_then_wraps_after_the_last_lease() -> None:
    ports = PortRange(40000, 40004)
    assert pick_port(ports, set()) == 40000
    assert pick_port(ports, {40000, 40001}) == 40002
    assert pick_port(ports, {40003}, after=40002) == 40004
    assert pick_port(ports, {40000}, after=40004) == 40001
    assert pick_port(ports, set(range(40000, 40005))) is None


def test_twenty_thousand_ports_fit_one_address() -> None:
    ports = PortRange(40000, 59999)
    assert len(ports) == 20000
    busy = set(range(40000, 59999))
    assert pick_port(ports, busy) == 59999


@pytest.mark.parametrize("text", ["1000-2000", "50000-40000", "abc", "40000-70000"])
def test_bad_ranges_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ValueError, match="relay port range"):
        PortRange.parse(text)


def test_parse_and_cooldown_covers_udp_stream_timeout() -> None:
    assert PortRange.parse("40000-49999") == PortRange(40000, 49999)
    assert 40000 in PortRange.parse("40000")
    assert DEFAULT_COOLDOWN_S >= 120
