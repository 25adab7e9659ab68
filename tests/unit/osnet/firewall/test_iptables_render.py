"""iptables-restore scripts rendered from plans: golden files plus the properties that matter."""

from __future__ import annotations

import pytest

from higgs.osnet.firewall.iptables_render import Jump, render

from .golden_files import assert_golden
from .variants import VARIANTS


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_golden(variant: str) -> None:
    v4, v6 = render(VARIANTS[variant])
    assert_golden(f"{variant}.v4.rules", v4.restore_script())
    assert_golden(f"{variant}.v6.rules", v6.restore_script())


def test_only_jumps_touch_builtin_chains_and_carry_the_marker() -> None:
    for plan in VARIANTS.values():
        for chains in render(plan):
            for line in chains.restore_script().splitlines():
                if line.startswith(("-A ", "-I ")):
                    chain = line.split()[1]
                    prefix = f"{plan.names.chain_prefix}-"
                    if not chain.startswith(prefix):
                        assert line.startswith(f"-I {chain} 1 -m comment --comment ")
                        assert f'"{plan.names.comment}"' in line
                        assert line.split()[-1].startswith(prefix)


def test_masquerade_on_uplink_and_never_with_input_interface() -> None:
    v4, v6 = render(VARIANTS["node_full"])
    nat4 = v4.tables["nat"]["HIGGSNODE_NODE1-NAT"]
    assert nat4 == ["-s 10.66.0.0/24 -o enp3s0.100 -j MASQUERADE"]
    assert v6.tables["nat"]["HIGGSNODE_NODE1-NAT"] == ["-s fd66::/64 -o enp3s0.100 -j MASQUERADE"]
    assert not any("-i " in r for r in nat4)  # iptables rejects -i in POSTROUTING


def test_reject_mode_has_no_ipv6_nat() -> None:
    _, v6 = render(VARIANTS["node_minimal"])
    assert "nat" not in v6.tables
    assert v6.tables["filter"]["HIGGSNODE_T-FWD"][0] == (
        "-i wg0 -j REJECT --reject-with icmp6-adm-prohibited"
    )


def test_missing_jumps_only_are_inserted() -> None:
    v4, _ = render(VARIANTS["node_minimal"])
    fwd = Jump("filter", "FORWARD", "HIGGSNODE_T-FWD", "higgs:node:t")
    script = v4.restore_script(missing=(fwd,))
    inserts = [ln for ln in script.splitlines() if ln.startswith("-I ")]
    assert inserts == ['-I FORWARD 1 -m comment --comment "higgs:node:t" -j HIGGSNODE_T-FWD']
    assert fwd.spec() == ["-m", "comment", "--comment", "higgs:node:t", "-j", "HIGGSNODE_T-FWD"]


def test_kill_switch_returns_instead_of_accepting() -> None:
    v4, v6 = render(VARIANTS["ks_strict"])
    out4 = v4.tables["filter"]["HIGGSNODE_KS-OUT"]
    assert not any("ACCEPT" in r for r in out4)
    assert out4[-1] == "-j REJECT --reject-with icmp-admin-prohibited"
    assert "-d 203.0.113.5 -p tcp -m tcp --dport 443 -j RETURN" in out4
    out6 = v6.tables["filter"]["HIGGSNODE_KS-OUT"]
    assert "-d 2001:db8::5 -p udp -m udp --dport 51820 -j RETURN" in out6
    assert "-j RETURN" not in out6  # IPv6 blocked unless tunnelled


def test_kill_switch_forwards_only_into_the_tunnel() -> None:
    v4, v6 = render(VARIANTS["ks_strict"])
    for chains in (v4, v6):
        assert chains.tables["filter"]["HIGGSNODE_KS-FWD"] == [
            "-o hgc0 -j RETURN",
            "-i hgc0 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-j DROP",
        ]
        assert Jump("filter", "FORWARD", "HIGGSNODE_KS-FWD", "higgs:node:ks") in chains.jumps
    lan4, lan6 = render(VARIANTS["ks_lan"])
    assert "-d 192.168.0.0/16 -j RETURN" in lan4.tables["filter"]["HIGGSNODE_KSLAN-FWD"]
    assert lan6.tables["filter"]["HIGGSNODE_KSLAN-FWD"][-2] == "-j RETURN"  # IPv6 not blocked
