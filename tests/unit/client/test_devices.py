"""The client's side of devices (issue 18): the exported config and the listing (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from higgs.client.devices import device_config, format_devices
from higgs.client.settings import ClientSettings
from higgs.common.keys import PrivateKey
from higgs.protocol.api import RouteNode, WireGuardConfig
from higgs.protocol.devices import DeviceCreated, DeviceInfo, DeviceList

NODE_KEY = PrivateKey.generate().public_b64()


def _info(state: str = "active", **more: object) -> DeviceInfo:
    values: dict[str, object] = {
        "device_id": "d_0123456789abcdef",
        "name": "phone",
        "state": state,
        "node_id": "n_0123456789abcdef",
        "public_key": PrivateKey.generate().public_b64(),
        "address": "10.77.0.5/32",
        "endpoint": "198.51.100.10:40001",
        "path": "udp_relay",
        "created_at": datetime(2026, 12, 2, tzinfo=UTC),
    }
    values.update(more)
    return DeviceInfo.model_validate(values)


def test_the_config_names_the_device_and_holds_only_its_own_key() -> None:
    key = PrivateKey.generate()
    created = DeviceCreated(
        device=_info(),
        node=RouteNode(node_id="n_0123456789abcdef", country="DE", region="Lab"),
        wireguard=WireGuardConfig(
            address="10.77.0.5/32",
            node_public_key=NODE_KEY,
            dns=["10.77.0.1"],
            mtu=1380,
            allowed_ips=["0.0.0.0/0", "::/0"],
            persistent_keepalive=25,
        ),
    )
    settings = ClientSettings(server_url="https://vpn.example.test", token="hgc_" + "a" * 40)
    text = device_config(key, created, settings, settings.server_url)
    first = text.splitlines()[0]
    assert (
        first
        == "# Higgs.net device phone (d_0123456789abcdef) on node n_0123456789abcdef (DE, Lab)"
    )
    assert "higgsvpn revoke-device phone" in text
    assert f"PrivateKey = {key.b64()}" in text
    assert f"PublicKey = {NODE_KEY}" in text
    assert "Endpoint = 198.51.100.10:40001" in text
    assert "PersistentKeepalive = 25" in text


def test_the_listing_says_when_the_node_is_gone_for_good() -> None:
    text = format_devices(
        DeviceList(
            devices=[
                _info("node_gone"),
                _info("revoked", name="old", close_reason="quota_exceeded"),
            ]
        )
    )
    assert "node gone for good: export it again with --replace" in text
    assert "revoked (quota_exceeded)" in text
    assert "higgsvpn export --name" in format_devices(DeviceList(devices=[]))
