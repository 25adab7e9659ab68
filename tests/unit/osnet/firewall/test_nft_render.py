"""nftables scripts rendered from plans: golden files plus the properties that matter."""

from __future__ import annotations

import re

import pytest

from higgs.osnet.firewall.nft_render import render, render_delete
from higgs.osnet.firewall.plan import NodePolicy

from .golden_files import assert_golden
from .variants import VARIANTS


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_golden(variant: str) -> None:
    assert_golden(f"{variant}.nft", render(VARIANTS[variant]))


def _chain(script: str, name: str) -> str:
    match = re.search(rf"\tchain {name} {{\n(.*?)\n\t}}", script, re.S)
    assert match, name
    return match.group(1)


def test_one_table_replaced_in_one_script() -> None:
    script = render(VARIANTS["node_full"])
    tables = set(re.findall(r"^(?:delete )?table (\S+ \S+)", script, re.M))
    assert tables == {"inet higgsnode_node1"}
    # create (no-op if present), delete, declare: the order that makes re-apply atomic
    heads = [ln for ln in script.splitlines() if ln.startswith(("table", "delete"))]
    assert heads == [
        "table inet higgsnode_node1 {}",
        "delete table inet higgsnode_node1",
        "table inet higgsnode_node1 {",
    ]


def test_masquerade_is_on_the_uplink_never_the_tunnel() -> None:
    plan = VARIANTS["node_full"]
    assert isinstance(plan, NodePolicy)
    post = _chain(render(plan), "postrouting")
    assert 'oifname "enp3s0.100" ip saddr 10.66.0.0/24 masquerade' in post
    assert 'oifname "enp3s0.100" ip6 saddr fd66::/64 masquerade' in post
    assert "iifname" not in post
    assert "hg-wg.0" not in post


def test_dns_of_any_destination_is_redirected_to_the_forwarder() -> None:
    pre = _chain(render(VARIANTS["node_full"]), "prerouting")
    assert "th dport 53 dnat ip to 10.66.0.1:5353" in pre
    assert "th dport 53 dnat ip6 to [fd66::1]:5353" in pre
    assert "daddr" not in pre  # any address, not only the pushed resolver


def test_ipv6_reject_mode_refuses_all_tunnel_ipv6() -> None:
    fwd = _chain(render(VARIANTS["node_minimal"]), "forward")
    assert 'iifname "wg0" meta nfproto ipv6 counter reject' in fwd
    assert "ip6 saddr" not in render(VARIANTS["node_minimal"])


def test_ipv6_dns_refused_without_ipv6_forwarder() -> None:
    fwd = _chain(render(VARIANTS["node_nat66_dns4"]), "forward")
    assert "meta nfproto ipv6 meta l4proto { tcp, udp } th dport 53 counter reject" in fwd
    assert "dnat ip6" not in render(VARIANTS["node_nat66_dns4"])


def _forward_index(fwd: list[str], *keys: str) -> dict[str, int]:
    return {k: next(i for i, ln in enumerate(fwd) if k in ln) for k in keys}


def test_established_flows_are_accepted_first_then_owner_protection() -> None:
    """One rule for nearly every packet; the SYN-only MSS clamp is ahead of it (a SYN-ACK is
    established already), behind a single test of the flags. The flows to newly blocked
    destinations are cut by the backend (.flows), not by rule order."""
    fwd = _chain(render(VARIANTS["node_full"]), "forward").splitlines()
    assert fwd[1:3] == [
        "\t\ttcp flags & (syn | rst) == syn jump mss_clamp",
        "\t\tct state established,related accept",
    ]
    idx = _forward_index(fwd, "@blocked4", "dport 25", 'oifname "enp3s0.100" accept')
    assert idx["@blocked4"] < idx["dport 25"] < idx['oifname "enp3s0.100" accept']
    assert fwd[-2:] == ['\t\tiifname "hg-wg.0" counter drop', '\t\toifname "hg-wg.0" counter drop']
    clamp = _chain(render(VARIANTS["node_full"]), "mss_clamp")
    assert clamp.count("tcp option maxseg size set rt mtu") == 2


def test_without_nat66_established_ipv6_still_meets_the_refusal() -> None:
    fwd = _chain(render(VARIANTS["node_minimal"]), "forward").splitlines()
    idx = _forward_index(fwd, "ct state established", "meta nfproto ipv6 counter reject")
    assert (
        "meta nfproto ipv4 ct state established,related accept" in fwd[idx["ct state established"]]
    )


def test_owner_protection_precedes_established_where_flows_cannot_be_cut() -> None:
    fwd = _chain(render(VARIANTS["node_full"], established_first=False), "forward").splitlines()
    idx = _forward_index(fwd, "@blocked4", "established", "dport 25", 'oifname "enp3s0.100" accept')
    assert idx["@blocked4"] < idx["established"] < idx["dport 25"]
    assert idx["dport 25"] < idx['oifname "enp3s0.100" accept']


def test_uplink_move_changes_only_uplink_lines() -> None:
    plan = VARIANTS["node_full"]
    assert isinstance(plan, NodePolicy)
    before = render(plan).splitlines()
    after = render(plan.with_uplink("wlan0")).splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed
    for old, new in changed:
        assert old.replace('"enp3s0.100"', '"wlan0"') == new


def test_kill_switch_allows_only_tunnel_and_endpoints() -> None:
    out = _chain(render(VARIANTS["ks_strict"]), "output").splitlines()
    assert out[-1].strip() == "counter reject with icmpx type admin-prohibited"
    accepts = [ln.strip() for ln in out if ln.strip().endswith("accept")]
    assert 'oifname "hgc0" accept' in accepts
    assert "ip daddr 203.0.113.5 tcp dport 443 accept" in accepts
    assert "ip6 daddr 2001:db8::5 udp dport 51820 accept" in accepts
    assert "meta mark 0xca6c accept" in accepts
    assert not any("nfproto ipv6 accept" in a or "@lan" in a for a in accepts)


def test_kill_switch_forwards_only_into_the_tunnel_and_its_answers_back() -> None:
    """Containers and VMs behind the client leave through the tunnel or not at all."""
    fwd = [ln.strip() for ln in _chain(render(VARIANTS["ks_strict"]), "forward").splitlines()]
    assert fwd[0] == "type filter hook forward priority filter; policy accept;"
    assert fwd[1:] == [
        'oifname "hgc0" accept',
        # Not "ct state established" alone: a connection opened before the switch went on
        # would keep leaking through the uplink.
        'iifname "hgc0" ct state established,related accept',
        # Not reject: the ICMP answer would be output through the uplink, which is forbidden.
        "counter drop",
    ]
    lan = _chain(render(VARIANTS["ks_lan"]), "forward")
    assert "ip daddr @lan4 accept" in lan  # the LAN rule of the machine holds for them too
    assert "meta nfproto ipv6 accept" in lan


def test_delete_script_never_fails_on_absent_table() -> None:
    assert render_delete("higgsnode_x") == (
        "table inet higgsnode_x {}\ndelete table inet higgsnode_x\n"
    )


def test_kill_switch_untracks_exactly_wireguards_datagrams_both_ways() -> None:
    """The same tuples untracked in both directions (one direction tracked alone would make
    the other look new), only from and to WireGuard's port, and let in by that tuple; the
    tunnel interface is the first rule of output and input."""
    script = render(VARIANTS["ks_strict"])
    pre, raw_out = _chain(script, "raw_prerouting"), _chain(script, "raw_output")
    assert "priority raw" in pre
    assert "priority raw" in raw_out
    assert "udp dport 41414 ip saddr . udp sport { 198.51.100.20 . 51820 } notrack" in pre
    assert "udp sport 41414 ip daddr . udp dport { 198.51.100.20 . 51820 } notrack" in raw_out
    assert "203.0.113.5" not in pre + raw_out  # the TCP endpoint stays tracked
    out, inp = _chain(script, "output").splitlines(), _chain(script, "input").splitlines()
    assert out[1] == '\t\toifname "hgc0" accept'
    assert inp[1] == '\t\tiifname "hgc0" accept'
    assert "udp dport 41414 ip saddr . udp sport { 198.51.100.20 . 51820 } accept" in inp[2]
    # Without WireGuard's port nothing is untracked.
    assert "notrack" not in render(VARIANTS["ks_lan"])
