"""Restoring a per-interface sysctl whose interface is gone is not a failure: the setting
went with the interface (the node raises the uplink's accept_ra; the uplink may be unplugged
before the node stops)."""

from __future__ import annotations

from higgs.osnet import sysctl, undo, undo_registry
from higgs.osnet.runner import RecordingRunner


def test_sysctl_of_a_vanished_interface_counts_as_restored() -> None:
    key = "net.ipv6.conf.hgt-gone-x0.accept_ra"
    assert not sysctl.exists(key)
    undo_registry.apply(sysctl.undo_spec(key, "1"), undo.UndoContext(RecordingRunner()))
