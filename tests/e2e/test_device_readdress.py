"""A direct device follows its node to a new public address (issue 18 item 2).

The node's WireGuard port is mapped by the real miniupnpd on its home router, and a device
exported then names ``old_address:port``. Then the home router's public address changes
(the new address SNATs the LAN; the old one answers nothing any more, dropped before the
router's NAT sees it), while miniupnpd goes on running and the node goes on reporting the
mapping with the external address its router told it. The app's configured endpoint leads
nowhere. An official app asks no server; the product moves it anyway, by WireGuard roaming:
the server withdraws the mapping it can no longer verify, the device gets a relay lease and
the app follows the node's handshakes onto it, then the node steers it onto a direct path at
the node's new address (the app's NAT lets the node's datagrams in: the lab's ``full_cone``
client router). Shown as a user would check it: the app's ``wg show`` names the new address,
its pings flow, and the internet sees the node's new address.

Everything changed on the routers is put back in a ``finally``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.client_system import (
    Client,
    System,
    client_public,
    home_public,
    needs_node,
    wait_until,
)
from tests.e2e.home_address import (
    NEW_HOME_PUBLIC,
    change_home_address,
    old_address_gone,
    restore_home_address,
    system_with_miniupnpd,
)
from tests.e2e.test_device_roaming import node_endpoint
from tests.e2e.test_devices import StockApp, app_endpoint, devices, endpoints, export, pings

pytestmark = [pytest.mark.e2e, pytest.mark.root, needs_node, pytest.mark.timeout(420)]

FOLLOW_WITHIN_S = 90  # withdrawal + roaming grace + relay + steering, on a busy machine


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    env = {"BOSON_DEVICE_ROAM_AFTER_S": "5", "BOSON_PUNCH_STEER_AFTER_S": "5"}
    with system_with_miniupnpd(tmp_path_factory.mktemp("readdress"), env) as s:
        yield s


def test_a_direct_device_follows_its_node_to_a_new_public_address(
    system: System, tmp_path: Path
) -> None:
    lab = system.lab
    user: Client = system.client()
    wait_until("the server to verify the node's port mapping",
               lambda: node_endpoint(system) is not None, 60)  # fmt: skip
    mapped = node_endpoint(system)
    assert mapped is not None
    assert mapped.startswith(home_public(lab) + ":")
    lab.set_nat("client_router", "full_cone")
    app: StockApp | None = None
    try:
        _, cfg = export(user, "laptop", tmp_path)
        assert cfg["endpoint"] == mapped
        laptop: dict[str, Any] = devices(user)["laptop"]
        app = StockApp(user, cfg)
        wait_until("the app's first ping on the direct path", lambda: pings(user), 30)
        wait_until(
            "the node to see the app at its public address",
            lambda: endpoints(lab.node, system.node.interface)[laptop["public_key"]].startswith(
                client_public(lab) + ":"
            ),
            15,
        )
        time.sleep(3)  # a peer_stats report or two carries the app's address to the server

        old = home_public(lab)
        change_home_address(lab)  # miniupnpd and its mapping stay
        old_address_gone(lab, old)
        moved = time.monotonic()
        try:
            seen: list[str] = []

            def on_new_direct() -> bool:
                now = app_endpoint(user)
                if not seen or seen[-1] != now:
                    seen.append(now)
                return now.startswith(NEW_HOME_PUBLIC + ":") and pings(user)

            wait_until("the app's pings on a direct path at the node's new address",
                       on_new_direct, FOLLOW_WITHIN_S)  # fmt: skip
            took = time.monotonic() - moved
            print(f"direct device at the new address after {took:.1f} s (app's endpoints {seen})")
            assert pings(user, count=5)
            assert lab.whoami(user.host)["ip"] == NEW_HOME_PUBLIC
            assert endpoints(lab.node, system.node.interface)[laptop["public_key"]].startswith(
                client_public(lab) + ":"
            )
            # Working again, on a direct path: neither relayed nor endpoint lost.
            wait_until("higgsvpn devices to say active",
                       lambda: devices(user)["laptop"]["state"] == "active", 15)  # fmt: skip
        finally:
            restore_home_address(lab)
    finally:
        if app is not None:
            app.stop()
        lab.set_nat("client_router", "cone")
    user.vpn("revoke-device", "laptop")
    assert "laptop" not in devices(user)
