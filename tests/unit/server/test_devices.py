"""The pure parts of devices (issue 18): what a device's state is, the limit, the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from higgs.common.keys import PrivateKey
from higgs.protocol.devices import DeviceCreateRequest
from higgs.server.services.devices import device_state, limit_reached, new_device_id
from higgs.server.store.devices import DeviceRecord
from higgs.server.store.tables import Device

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def record(**over: object) -> DeviceRecord:
    if over.get("path") == "direct":  # a direct device holds no lease unless told
        over.setdefault("lease_address", None)
        over.setdefault("lease_port", None)
    device = Device(
        id="d_0123456789abcdef",
        client_id=1,
        name="phone",
        public_key=PrivateKey.generate().public_b64(),
        session_id="s_0123456789abcdef",
        node_id="n_0123456789abcdef",
        endpoint=over.pop("endpoint", "198.51.100.10:40001"),
        path=over.pop("path", "udp_relay"),
        created_at=NOW - timedelta(days=30),
        revoked_at=over.pop("revoked_at", None),
        app_endpoint=over.pop("app_endpoint", None),
    )
    values: dict[str, object] = {
        "device": device,
        "client": "alice",
        "session_state": "open",
        "close_reason": None,
        "address": "10.77.0.5/32",
        "node_state": "online",
        "node_updated_at": NOW - timedelta(days=1),
        "node_subnet": "10.77.0.0/24",
        "lease_address": "198.51.100.10",
        "lease_port": 40001,
    }
    values.update(over)
    return DeviceRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("over", "state"),
    [
        ({}, "active"),
        ({"node_state": "stopped"}, "node_offline"),  # a restart, or a short absence
        ({"node_state": "offline", "node_updated_at": NOW - timedelta(days=6)}, "node_offline"),
        ({"node_state": "offline", "node_updated_at": NOW - timedelta(days=8)}, "node_gone"),
        ({"node_state": None, "node_subnet": None}, "node_gone"),  # the node's row is gone
        ({"node_subnet": "10.88.0.0/24"}, "node_gone"),  # its peer would be refused
        ({"session_state": "closed", "close_reason": "client_revoked"}, "revoked"),
        ({"revoked_at": NOW}, "revoked"),
        # A direct device: its endpoint still the node's, gone, or another one now.
        (
            {
                "path": "direct",
                "endpoint": "203.0.113.10:51820",
                "node_endpoint": "203.0.113.10:51820",
            },
            "active",
        ),
        ({"path": "direct", "endpoint": "203.0.113.10:51820"}, "endpoint_lost"),
        (
            {
                "path": "direct",
                "endpoint": "203.0.113.10:51820",
                "node_endpoint": "203.0.113.11:51820",
            },
            "endpoint_lost",
        ),
        (
            {"path": "direct", "endpoint": "203.0.113.10:51820", "node_state": "stopped"},
            "node_offline",
        ),
        # A direct device whose node lost the endpoint, on the relay lease it got then:
        # relayed once the app answered through the relay (its client leg bound).
        (
            {
                "path": "direct",
                "endpoint": "203.0.113.10:51820",
                "lease_address": "198.51.100.10",
                "lease_port": 40001,
                "lease_client_seen": "203.0.113.20:40321",
            },
            "relayed",
        ),
        (
            {
                "path": "direct",
                "endpoint": "203.0.113.10:51820",
                "lease_address": "198.51.100.10",
                "lease_port": 40001,
            },
            "endpoint_lost",
        ),
        (  # then steered off the relay: the node hears the app directly at its new address
            {
                "path": "direct",
                "endpoint": "203.0.113.10:51820",
                "lease_address": "198.51.100.10",
                "lease_port": 40001,
                "lease_client_seen": "203.0.113.20:40321",
                "lease_direct": "203.0.113.20:40321",
            },
            "active",
        ),
        (  # (the node's endpoint back: the app stays where it roamed, on the relay)
            {
                "path": "direct",
                "endpoint": "203.0.113.10:51820",
                "lease_address": "198.51.100.10",
                "lease_port": 40001,
                "lease_client_seen": "203.0.113.20:40321",
                "node_endpoint": "203.0.113.10:51820",
            },
            "relayed",
        ),
        (
            {
                "path": "direct",
                "endpoint": "203.0.113.10:51820",
                "lease_address": "198.51.100.10",
                "lease_port": 40001,
                "lease_client_seen": "203.0.113.20:40321",
                "node_state": "stopped",
            },
            "node_offline",
        ),
        ({"node_endpoint": "203.0.113.10:51820"}, "active"),  # a relay port stays its own
        # A relayed device whose relay host died: its lease moved to another host (or is
        # gone), so the port in its config reaches nothing.
        ({"lease_address": "198.51.100.20"}, "endpoint_lost"),
        ({"lease_address": None, "lease_port": None}, "endpoint_lost"),
        (
            {"endpoint": "[2001:db8::10]:40001", "lease_address": "2001:db8::10"},
            "active",
        ),
    ],
)
def test_device_state(over: dict[str, object], state: str) -> None:
    assert device_state(record(**over), NOW, WEEK) == state


def test_limit_and_ids() -> None:
    assert not limit_reached(9, 10)
    assert limit_reached(10, 10)
    assert limit_reached(0, 0)  # a limit of 0 turns devices off
    ids = {new_device_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("d_") and len(i) == 18 for i in ids)


@pytest.mark.parametrize("name", ["", "-phone", "a b", "x" * 33, "phone/1", "é"])
def test_bad_device_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        DeviceCreateRequest(name=name, public_key=PrivateKey.generate().public_b64())


def test_good_device_request() -> None:
    key = PrivateKey.generate().public_b64()
    req = DeviceCreateRequest(name="Pixel-8.work_1", public_key=key, country="de")
    assert (req.country, req.replace) == ("DE", False)
