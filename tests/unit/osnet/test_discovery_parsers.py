"""macOS and Windows default-route parsers against real captured outputs (see data/SOURCES.md)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from higgs.osnet.discovery_parsers import (
    DefaultRoute,
    best_default,
    macos_uplink,
    parse_macos_ifconfig,
    parse_macos_route_get,
    parse_windows_get_netroute_json,
    parse_windows_route_print,
)
from higgs.osnet.errors import DiscoveryError

DATA = Path(__file__).parent / "data"


def data(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_macos_route_get() -> None:
    route = parse_macos_route_get(data("macos_route_get_default.txt"))
    assert route == DefaultRoute("en1", "192.168.68.1", 0, 4)
    assert parse_macos_route_get(data("macos_route_get_default_en0.txt")).gateway == "10.33.79.254"


def test_macos_without_default_route_is_a_clear_error() -> None:
    with pytest.raises(DiscoveryError, match="no default route"):
        parse_macos_route_get(data("macos_route_get_default_none.txt"))


def test_macos_point_to_point_default_route_has_no_gateway() -> None:
    # A VPN's utun default route prints a link, not an address, as its gateway.
    text = data("macos_route_get_default.txt").replace("192.168.68.1", "link#17")
    text = text.replace("en1", "utun3")
    assert parse_macos_route_get(text) == DefaultRoute("utun3", None, 0, 4)


def test_macos_ifconfig() -> None:
    interfaces = parse_macos_ifconfig(data("macos_ifconfig.txt"))
    assert set(interfaces) >= {"lo0", "en0", "en5", "awdl0", "bridge0", "utun0", "vmnet1"}
    en0 = interfaces["en0"]
    assert (en0.mtu, en0.index, en0.active) == (1500, 10, True)
    assert "RUNNING" in en0.flags
    assert en0.addresses == tuple(
        ipaddress.ip_interface(a)
        for a in (
            "fe80::4dd:cbd7:2743:da63/64",
            "192.168.1.221/24",
            "2600:1700:bab0:d40:1874:4566:6499:f3d1/64",
            # the two "deprecated" temporary addresses are left out
            "2600:1700:bab0:d40:fdd1:e943:edd4:5187/64",
            "2600:1700:bab0:d40::39/64",
        )
    )
    assert interfaces["ap1"].active is False
    assert interfaces["utun1"].active is None
    assert interfaces["lo0"].addresses[0] == ipaddress.ip_interface("127.0.0.1/8")


def test_macos_uplink_combines_both_commands() -> None:
    route = data("macos_route_get_default.txt").replace("en1", "en0")
    up = macos_uplink(route, data("macos_ifconfig.txt"))
    assert (up.name, up.gateway, up.mtu, up.index) == ("en0", "192.168.68.1", 1500, 10)
    assert up.address == ipaddress.ip_interface("192.168.1.221/24")
    with pytest.raises(DiscoveryError, match="not in ifconfig"):
        macos_uplink(data("macos_route_get_default.txt").replace("en1", "en9"), "")


def test_windows_route_print() -> None:
    routes = parse_windows_route_print(data("windows_route_print.txt"))
    assert routes == [DefaultRoute("192.168.92.134", "192.168.92.2", 25, 4)]


def test_windows_route_print_lowest_metric_wins() -> None:
    routes = parse_windows_route_print(data("windows_route_print_multiple_gateways.txt"))
    assert [r.gateway for r in routes] == ["192.168.100.1", "10.21.38.1"]
    assert best_default(routes) == DefaultRoute("10.21.38.97", "10.21.38.1", 2, 4)


def test_windows_route_print_localised_headers() -> None:
    routes = parse_windows_route_print(data("windows_route_print_localized_fr.txt"))
    assert routes == [DefaultRoute("10.88.88.149", "10.88.88.2", 10, 4)]


def test_windows_persistent_routes_are_not_active_routes() -> None:
    routes = parse_windows_route_print(data("windows_route_print_persistent.txt"))
    assert routes == [DefaultRoute("192.168.50.220", "192.168.50.254", 271, 4)]


def test_windows_ipv6_default_route_with_wrapped_lines() -> None:
    # The capture has no IPv6 default route; add one the way route.exe prints it.
    text = data("windows_route_print.txt").replace(
        "  1    331 ff00::/8",
        " 12    281 ::/0                     fe80::1\r\n"
        " 12    281 2001:db8:1234:5678:9abc:def0:1234:0/112\r\n"
        "                                    On-link\r\n"
        "  1    331 ff00::/8",
    )
    routes = parse_windows_route_print(text)
    assert routes[1] == DefaultRoute("12", "fe80::1", 281, 6, 12)
    assert best_default(routes, 6).gateway == "fe80::1"


def test_windows_get_netroute_json() -> None:
    routes = parse_windows_get_netroute_json(data("windows_get_netroute.json"))
    assert routes == [DefaultRoute("Ethernet", "192.168.64.1", 0, 4, 13)]
    with pytest.raises(DiscoveryError, match="no IPv6 default route"):
        best_default(routes, 6)


def test_windows_interface_metric_decides_between_equal_route_metrics() -> None:
    text = data("windows_get_netroute_two_defaults.json")
    routes = parse_windows_get_netroute_json(text)
    assert [r.metric for r in routes] == [0, 0]
    assert best_default(routes).interface == "happ-tun"  # a tie keeps the printed order
    # With the interface metrics our command asks for, Windows' own choice is reproduced.
    items = json.loads(text)
    items[0]["InterfaceMetric"], items[1]["InterfaceMetric"] = 5, 25
    assert best_default(parse_windows_get_netroute_json(json.dumps(items))).interface == "happ-tun"
    items[0]["InterfaceMetric"], items[1]["InterfaceMetric"] = 50, 25
    chosen = best_default(parse_windows_get_netroute_json(json.dumps(items)))
    assert (chosen.interface, chosen.gateway, chosen.metric) == ("Ethernet", "192.168.0.1", 25)


def test_windows_single_route_is_an_object_not_an_array() -> None:
    one = json.loads(data("windows_get_netroute_two_defaults.json"))[1]
    assert parse_windows_get_netroute_json(json.dumps(one))[0].interface_index == 2


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]"])
def test_windows_bad_json_is_a_clear_error(text: str) -> None:
    with pytest.raises(DiscoveryError):
        parse_windows_get_netroute_json(text)
