"""higgsvpn in relay mode against real bosonserver and higgsnode in the lab.

One lab, server and node for the whole module (building them is the slow part); each test
adds its own client and disconnects it. The server-restart test runs last: it kills the server.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from higgs.osnet import hoststate
from tests.e2e.client_system import (
    Client,
    System,
    check_tunnel,
    client_public,
    disconnect_all,
    home_public,
    running_system,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def relay_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("relay"), direct=False) as system:
        yield system


@pytest.fixture
def relay(relay_system: System) -> Iterator[System]:
    yield relay_system
    disconnect_all(relay_system)


def test_relay_mode_ping_http_dns_through_the_node(relay: System) -> None:
    lab = relay.lab
    client = relay.client()
    assert lab.whoami(client.host)["ip"] == client_public(lab)

    answer = client.connect("--mode", "relay")
    assert answer["mode"] == "relay"
    assert answer["address"].startswith("10.")

    check_tunnel(relay, client)
    status = client.status()
    assert status["connected"] is True
    assert status["mode"] == "relay"
    assert status["handshake_age_s"] is not None
    assert status["rx_bytes"] > 0
    assert status["tx_bytes"] > 0
    assert relay.server.relayed_datagrams() > 0

    client.disconnect()
    assert lab.whoami(client.host)["ip"] == client_public(lab)


def test_disconnect_restores_the_client_host_exactly(relay: System) -> None:
    client = relay.client()
    before = hoststate.snapshot(netns=client.host.ns)
    resolv_before = client.resolv_conf.read_text()
    client.connect("--mode", "relay")
    during = hoststate.snapshot(netns=client.host.ns)
    assert before.diff(during), "connect changed nothing on the host?"
    assert client.resolv_conf.read_text() != resolv_before
    client.disconnect()
    after = hoststate.snapshot(netns=client.host.ns)
    assert before.diff(after) == ""
    assert client.resolv_conf.read_text() == resolv_before
    assert not (client.state_dir / "daemon.pid").exists()


def _forced_out(system: System, client: Client) -> subprocess.CompletedProcess[str]:
    """An application forcing its way out of the physical interface, around the tunnel."""
    url = f"http://{system.lab.internet.ip}/"
    argv = ["curl", "-sS", "--noproxy", "*", "--interface", "eth0", "--max-time", "5", url]
    return client.host.run(argv, check=False, timeout=20)


def test_kill_switch_blocks_outside_the_tunnel(relay: System) -> None:
    client = relay.client()
    assert _forced_out(relay, client).returncode == 0, "the lab itself is broken"
    client.connect("--mode", "relay")
    forced = _forced_out(relay, client)
    assert forced.returncode != 0, f"kill switch let traffic out: {forced.stdout}"
    client.disconnect()
    assert _forced_out(relay, client).returncode == 0, "the kill switch outlived the connection"


def test_connect_failure_says_why_and_leaves_host_as_before(relay: System) -> None:
    client = relay.client()
    before = hoststate.snapshot(netns=client.host.ns)
    out = client.vpn("connect", "--server", f"http://{relay.lab.server.ip}:9", check=False)
    assert out.returncode == 1
    assert "cannot reach the server" in out.stderr
    assert "Traceback" not in out.stderr
    out = client.vpn("connect", "--mode", "direct", check=False)  # the node has no endpoint
    assert out.returncode == 1
    assert "no direct endpoint" in out.stderr
    assert not (client.state_dir / "daemon.pid").exists()
    assert before.diff(hoststate.snapshot(netns=client.host.ns)) == ""


def test_server_restart_mid_session_recovers_without_user_action(relay: System) -> None:
    lab = relay.lab
    client = relay.client()
    client.connect("--mode", "relay")
    assert lab.whoami(client.host)["ip"] == home_public(lab)

    relay.server.kill()
    # The tunnel is down (relay gone), and nothing leaves by the client's own router.
    with pytest.raises(Exception):  # noqa: B017,PT011 - curl fails one way or another
        lab.whoami(client.host, timeout=4)
    assert _forced_out(relay, client).returncode != 0, "traffic leaked while the tunnel was down"

    relay.server.start()
    wait_until(
        "the tunnel to recover after the server restart",
        lambda: lab.whoami(client.host, timeout=4)["ip"] == home_public(lab),
        120,
        every=2.0,
    )
    assert client.status()["connected"] is True
