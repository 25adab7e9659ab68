"""The server's decision to move a direct device onto a UDP relay lease (issue 18): which
devices, and when (services/device_roaming.py)."""

from __future__ import annotations

from datetime import timedelta

from higgs.server.services.device_roaming import endpoint_lost, roam_due
from higgs.server.store.devices import DeviceRecord

from .test_devices import NOW, record

AFTER = timedelta(seconds=15)
ENDPOINT = "203.0.113.10:51820"
APP = "203.0.113.20:40321"


def direct(**over: object) -> DeviceRecord:
    values: dict[str, object] = {
        "path": "direct",
        "endpoint": ENDPOINT,
        "node_endpoint": None,
        "app_endpoint": APP,
    }
    values.update(over)
    return record(**values)


def test_a_direct_device_whose_online_node_lost_its_endpoint_has_lost_it() -> None:
    assert endpoint_lost(direct())
    assert endpoint_lost(direct(node_endpoint="203.0.113.11:51820"))


def test_devices_that_keep_working_or_cannot_be_helped_are_left_alone() -> None:
    keep = [
        direct(node_endpoint=ENDPOINT),  # the endpoint is still the node's
        direct(node_state="stopped"),  # the node is away: its endpoint may be fine later
        direct(lease_address="198.51.100.10", lease_port=40001),  # already on a lease
        direct(revoked_at=NOW),
        direct(session_state="closed", close_reason="client_revoked"),
        record(),  # a relayed device has its lease from the start
    ]
    for r in keep:
        assert not endpoint_lost(r)


def test_a_device_is_due_once_lost_for_the_grace_period() -> None:
    r = direct()
    due, since = roam_due([r], {}, NOW, AFTER)
    assert (due, since) == ([], {"d_0123456789abcdef": NOW})
    due, since = roam_due([r], since, NOW + AFTER - timedelta(seconds=1), AFTER)
    assert due == []
    due, since = roam_due([r], since, NOW + AFTER, AFTER)
    assert due == [r]
    assert since == {"d_0123456789abcdef": NOW}


def test_an_endpoint_back_within_the_grace_period_starts_the_clock_again() -> None:
    """A re-probe after a new source address withdraws the mapping for a few seconds."""
    lost, back = direct(), direct(node_endpoint=ENDPOINT)
    _, since = roam_due([lost], {}, NOW, AFTER)
    _, since = roam_due([back], since, NOW + timedelta(seconds=5), AFTER)
    assert since == {}
    due, since = roam_due([lost], since, NOW + AFTER, AFTER)
    assert due == []
    assert since == {"d_0123456789abcdef": NOW + AFTER}


def test_without_the_apps_address_the_relay_could_not_reach_it() -> None:
    r = direct(app_endpoint=None)
    due, since = roam_due([r], {"d_0123456789abcdef": NOW - AFTER}, NOW, AFTER)
    assert due == []
    assert since  # still lost: due as soon as the address is known
