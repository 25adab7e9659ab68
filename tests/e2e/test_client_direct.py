"""higgsvpn in direct mode: the home router forwards the node's WireGuard port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.client_system import (
    System,
    check_tunnel,
    client_public,
    disconnect_all,
    home_public,
    running_system,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def direct_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("direct"), direct=True) as system:
        yield system


@pytest.fixture
def direct(direct_system: System) -> Iterator[System]:
    yield direct_system
    disconnect_all(direct_system)


def test_direct_mode_through_port_forward_bypasses_the_relay(direct: System) -> None:
    lab = direct.lab
    client = direct.client()
    before = direct.server.relayed_datagrams()
    answer = client.connect("--mode", "direct")
    assert answer["mode"] == "direct"
    check_tunnel(direct, client)
    assert client.status()["mode"] == "direct"
    assert direct.server.relayed_datagrams() == before
    client.disconnect()
    assert lab.whoami(client.host)["ip"] == client_public(lab)


def test_auto_prefers_direct_when_reachable(direct: System) -> None:
    client = direct.client()
    answer = client.connect()
    assert answer["mode"] == "direct"
    assert direct.lab.whoami(client.host)["ip"] == home_public(direct.lab)


def test_export_gives_a_standard_config_and_qr(direct: System) -> None:
    client = direct.client()
    text = client.vpn("export").stdout
    assert "[Interface]" in text
    assert "[Peer]" in text
    assert f"Endpoint = {home_public(direct.lab)}:51820" in text
    assert "DNS = 10." in text
    png = client.state_dir / "wg.png"
    client.vpn("export", "--qr-png", str(png))
    assert png.read_bytes().startswith(b"\x89PNG")
    assert (png.stat().st_mode & 0o777) == 0o600
    qr = client.vpn("export", "--qr").stdout
    assert "█" in qr
