"""The lab router's miniupnpd config and ruleset parsing, and the lab's STUN responder."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from higgs.lab.miniupnpd import TABLE, RouterMapping, parse_mappings, render_config, render_table
from higgs.lab.services.stun import MAGIC_COOKIE, binding_response


def config(**kw: bool) -> str:
    return render_config(
        wan_if="wan0", lan_if="lan0", lan_net="192.168.1.0/24", stun_host="192.0.2.10",
        lease_file=Path("/tmp/run/leases"), upnp=kw.get("upnp", True),
        natpmp=kw.get("natpmp", True), uid="00000000-0000-0000-0000-000000000001",
    )  # fmt: skip


def test_config_keeps_miniupnpd_inside_the_lab() -> None:
    lines = config(upnp=False).splitlines()
    for line in (
        "ext_ifname=wan0", "listening_ip=lan0", "secure_mode=yes", "enable_upnp=no",
        "enable_natpmp=yes", "ext_perform_stun=yes", "ext_stun_host=192.0.2.10",
        f"upnp_table_name={TABLE}", f"upnp_nat_table_name={TABLE}",
        "lease_file=/tmp/run/leases", "allow 1024-65535 192.168.1.0/24 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
    ):  # fmt: skip
        assert line in lines


def test_table_forwards_by_default() -> None:
    text = render_table()
    assert f"table inet {TABLE}" in text
    assert "policy accept" in text
    assert "policy drop" not in text


def test_parse_mappings_from_miniupnpd_rules() -> None:
    ruleset = (
        "chain upnp_prerouting {\n"
        '\t\tiif "wan0" @nh,72,8 0x11 th dport 51820 dnat ip to 192.168.1.10:51820\n'
        '\t\tiif "wan0" @nh,72,8 0x6 th dport 8080 dnat ip to 192.168.1.20:80\n'
        "\t}\n"
    )
    assert parse_mappings(ruleset) == [
        RouterMapping("udp", 51820, "192.168.1.10", 51820),
        RouterMapping("tcp", 8080, "192.168.1.20", 80),
    ]
    assert parse_mappings("chain upnp_prerouting {\n}\n") == []


def test_stun_binding_response_carries_the_source() -> None:
    txid = os.urandom(12)
    request = struct.pack("!HHI", 1, 0, MAGIC_COOKIE) + txid
    answer = binding_response(request, ("203.0.113.10", 40000))
    assert answer is not None
    msg_type, length, cookie = struct.unpack("!HHI", answer[:8])
    assert (msg_type, cookie, answer[8:20]) == (0x0101, MAGIC_COOKIE, txid)
    assert length == len(answer) - 20
    assert bytes([0, 1, 0x9C, 0x40, 203, 0, 113, 10]) in answer  # MAPPED-ADDRESS
    assert binding_response(b"\x00\x03" + request[2:], ("203.0.113.10", 1)) is None
    assert binding_response(request[:19], ("203.0.113.10", 1)) is None
