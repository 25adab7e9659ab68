from __future__ import annotations

import pytest

from higgs.osnet.errors import OsnetError
from higgs.osnet.names import OwnedNames


def test_default_names() -> None:
    node = OwnedNames.for_instance("node")
    assert (node.interface, node.nft_table, node.comment) == (
        "higgsnode",
        "higgsnode",
        "higgs:node",
    )
    assert node.chain_prefix == "HIGGSNODE"
    assert str(node.wg_socket) == "/var/run/wireguard/higgsnode.sock"
    client = OwnedNames.for_instance("client")
    assert (client.interface, client.nft_table) == ("higgsvpn", "higgsvpn")


def test_instances_get_distinct_names_and_numbers() -> None:
    a = OwnedNames.for_instance("node", "t1")
    b = OwnedNames.for_instance("node", "t2")
    assert (a.interface, a.nft_table, a.comment) == ("hn-t1", "higgsnode_t1", "higgs:node:t1")
    assert a.fwmark != b.fwmark
    assert a.table_id == a.fwmark
    assert a.rule_priorities == (a.rule_priority, a.rule_priority + 1)
    assert set(a.rule_priorities).isdisjoint(b.rule_priorities)
    assert 0 < a.tc_major < 0xFFFF
    assert a.fwmark >> 16 == 0x6867
    assert OwnedNames.for_instance("node", "t1") == a  # stable: the sweep needs no state


def test_longest_instance_fits_an_interface_name() -> None:
    names = OwnedNames.for_instance("client", "a" * 12)
    assert len(names.interface) <= 15


def test_explicit_interface_may_hold_dashes_and_dots() -> None:
    assert OwnedNames.for_instance("node", interface="wg-node.1").interface == "wg-node.1"


@pytest.mark.parametrize("instance", ["A", "-x", "a" * 13, "a b", "a-b"])
def test_bad_instance_names_are_refused(instance: str) -> None:
    with pytest.raises(OsnetError, match="invalid instance name"):
        OwnedNames.for_instance("node", instance)
