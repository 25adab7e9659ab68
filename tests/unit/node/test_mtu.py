"""Which tunnel MTU the node chooses: from its uplink and the paths it serves, a probe's
result, or the owner's figure."""

from __future__ import annotations

from typing import Any

import pytest

from higgs.common.errors import ConfigError
from higgs.node.mtu import decide_mtu, fits_uplink, probe, served_paths
from higgs.node.settings import NodeSettings, load_node_settings
from tests.unit.osnet.test_mtu import SimulatedPath

SERVER = "http://boson.test:8080"


def settings(**overrides: Any) -> NodeSettings:
    return load_node_settings(environ={}, overrides={"server": SERVER, **overrides})


@pytest.mark.parametrize(
    ("endpoint", "server", "paths"),
    [
        ("203.0.113.7:51820", SERVER, ("udp4", "relay")),
        ("[2001:db8::7]:51820", SERVER, ("udp6", "relay")),
        # A name may resolve to either family at the client.
        ("home.example.test:51820", SERVER, ("udp4", "udp6", "relay")),
        (None, SERVER, ("relay",)),  # behind NAT: only the relay reaches it
        ("203.0.113.7:51820", None, ("udp4",)),
    ],
)
def test_the_paths_served_follow_the_endpoint_and_the_server(
    endpoint: str | None, server: str | None, paths: tuple[str, ...]
) -> None:
    s = load_node_settings(environ={}, overrides={"endpoint": endpoint, "server": server})
    assert served_paths(s) == paths


@pytest.mark.parametrize(
    ("endpoint", "uplink", "expected", "limited_by"),
    [
        ("203.0.113.7:51820", 1500, 1420, "udp4"),  # 1440 capped at WireGuard's 1420
        ("203.0.113.7:51820", 1400, 1340, "udp4"),  # a small uplink: 1400 - 60
        (None, 1400, 1340, "relay"),  # the relay is sized like direct IPv4
        ("[2001:db8::7]:51820", 1400, 1320, "udp6"),  # 1400 - 80
        ("home.example.test:51820", 1492, 1412, "udp6"),  # PPPoE, either family: the worst
        ("203.0.113.7:51820", 1300, 1280, "udp4"),  # never below the IPv6 minimum
    ],
)
def test_automatic_mtu_is_the_uplink_minus_the_worst_path_overhead(
    endpoint: str | None, uplink: int, expected: int, limited_by: str
) -> None:
    decision = decide_mtu(settings(endpoint=endpoint), uplink)
    assert (decision.mtu, decision.limited_by) == (expected, limited_by)
    assert f"uplink MTU {uplink}" in decision.reason


def test_a_probed_path_mtu_below_the_uplink_lowers_it() -> None:
    s = settings(endpoint="203.0.113.7:51820")
    assert decide_mtu(s, 1500, path_mtu=1400).mtu == 1340
    assert decide_mtu(s, 1500, path_mtu=None).mtu == 1420


def test_a_configured_mtu_wins_and_the_reason_names_the_automatic_one() -> None:
    s = settings(endpoint="203.0.113.7:51820", mtu=1380)
    decision = decide_mtu(s, 1400)
    assert decision.mtu == 1380
    assert decision.reason.startswith("configured (automatic would be 1340")
    # ... and it is checked against the uplink: 1380 + 60 does not fit 1400 bytes.
    assert not fits_uplink(s, 1380, 1400)
    assert fits_uplink(s, 1340, 1400)
    assert not fits_uplink(settings(endpoint="[2001:db8::7]:51820"), 1340, 1400)


@pytest.mark.parametrize("bad", [1279, 9001, "auto"])
def test_a_configured_mtu_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match="field 'mtu'"):
        settings(mtu=bad)


def test_mtu_is_automatic_by_default_and_no_probe_target_is_set() -> None:
    s = load_node_settings(environ={})
    assert s.mtu is None
    assert s.mtu_probe_target is None


@pytest.mark.parametrize("bad", ["example.test", "0.0.0.0", "224.0.0.1", "127.0.0.1", "::1"])
def test_the_probe_target_must_be_an_address_beyond_this_machine(bad: str) -> None:
    with pytest.raises(ConfigError, match="field 'mtu_probe_target'"):
        settings(mtu_probe_target=bad)


def test_without_a_probe_target_nothing_is_pinged() -> None:
    path = SimulatedPath(1400)
    assert probe(settings(), path, 1500) is None
    assert path.sizes == []


def test_with_a_configured_mtu_the_probe_is_skipped() -> None:
    path = SimulatedPath(1400)
    assert probe(settings(mtu=1300, mtu_probe_target="192.0.2.10"), path, 1500) is None
    assert path.sizes == []


def test_the_probe_finds_the_path_mtu_towards_the_target() -> None:
    path = SimulatedPath(1400)
    s = settings(endpoint="203.0.113.7:51820", mtu_probe_target="192.0.2.10")
    found = probe(s, path, 1500)
    assert found == 1400
    assert max(path.sizes) == 1500  # never more than the uplink carries
    assert decide_mtu(s, 1500, found).mtu == 1340


def test_a_probe_that_cannot_run_for_this_uplink_is_skipped() -> None:
    # An IPv6 path needs 1280 bytes; an uplink of 1200 cannot even carry the smallest probe.
    path = SimulatedPath(1200)
    assert probe(settings(mtu_probe_target="2001:db8::10"), path, 1200) is None
    assert path.sizes == []
