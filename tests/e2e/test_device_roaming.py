"""A direct device moves onto a relay lease by roaming (issue 18, the last gap).

The node gets its WireGuard port mapped by the real miniupnpd on its home router, the server
verifies the mapping, and a device exported then names that direct endpoint. A stock
wireguard-go app configured from the export alone pings through it. Then the node's direct
endpoint goes away: miniupnpd stops (its port mapping is gone) and the home router's public
address changes (the server sees the node's heartbeats from a new address, withdraws the
mapping and probes it again: no probe gets through any more). Within a bounded time the
server leases the device a UDP relay port whose starting address is the app, the node's
handshakes reach the app from ``relay_ip:port``, the app roams there, and its pings flow again
through the relay: ``wg show`` in the app's namespace names the relay, ``higgsvpn devices``
says ``relayed``, and the device's bytes still count in the account's usage.

The relay reaches the app only through a router that lets it in (endpoint-independent
filtering, the lab's ``full_cone``), as the node's steering does (test_devices.py); the
server's own steering off the relay is held back here (``punch_steer_after_s``), so the test
sees the relay path. Everything changed on the routers is put back in a ``finally``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from higgs.lab.miniupnpd import MiniUpnpd
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
    RELAY_IP,
    change_home_address,
    restore_home_address,
    system_with_miniupnpd,
)
from tests.e2e.test_devices import (
    StockApp,
    app_endpoint,
    device_session,
    devices,
    endpoints,
    export,
    pings,
    used_bytes,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root, needs_node, pytest.mark.timeout(420)]

ROAM_AFTER_S = 5  # BOSON_DEVICE_ROAM_AFTER_S (default 15)
ROAM_WITHIN_S = 60  # withdrawal (a heartbeat, 2 s) + the grace + the relay's pick-up + handshakes


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    env = {
        "BOSON_DEVICE_ROAM_AFTER_S": str(ROAM_AFTER_S),
        "BOSON_PUNCH_STEER_AFTER_S": "3600",
    }
    with system_with_miniupnpd(tmp_path_factory.mktemp("roaming"), env) as s:
        yield s


def node_endpoint(system: System) -> str | None:
    listing = json.loads(system.server.cli("nodes", "--json"))
    items = listing["nodes"] if isinstance(listing, dict) else listing
    (node,) = [n for n in items if n["node_id"] == system.node.node_id]
    endpoint = node.get("endpoint")
    return str(endpoint) if endpoint else None


def test_a_direct_device_roams_onto_a_relay_lease_when_its_node_loses_the_endpoint(
    system: System, tmp_path: Path
) -> None:
    lab = system.lab
    user: Client = system.client()
    miniupnpd: MiniUpnpd = system.miniupnpd  # type: ignore[attr-defined]
    wait_until("the server to verify the node's port mapping",
               lambda: node_endpoint(system) is not None, 60)  # fmt: skip
    mapped = node_endpoint(system)
    assert mapped is not None
    assert mapped.startswith(home_public(lab) + ":")
    assert miniupnpd.mappings(), "miniupnpd holds no mapping for the node"
    lab.set_nat("client_router", "full_cone")  # lets the relay's datagrams in (see above)
    app: StockApp | None = None
    try:
        _, cfg = export(user, "phone", tmp_path)
        assert cfg["endpoint"] == mapped  # the direct endpoint, no relay port
        phone: dict[str, Any] = devices(user)["phone"]
        assert (phone["state"], phone["path"]) == ("active", "direct")
        app = StockApp(user, cfg)
        wait_until("the app's first ping on the direct path", lambda: pings(user), 30)
        assert app_endpoint(user) == mapped
        assert lab.whoami(user.host)["ip"] == home_public(lab)
        wait_until(  # where the node sees the app: what the server records as its address
            "the node to see the app at its public address",
            lambda: endpoints(lab.node, system.node.interface)[phone["public_key"]].startswith(
                client_public(lab) + ":"
            ),
            15,
        )
        time.sleep(3)  # a peer_stats report or two (every 2 s) carries it to the server

        # The node's direct endpoint goes away: no mapping, and a new public address.
        miniupnpd.stop()  # (its nft table with the mapping's DNAT goes with it)
        change_home_address(lab)
        lost = time.monotonic()
        try:
            wait_until("the server to withdraw the node's direct endpoint",
                       lambda: node_endpoint(system) is None, 20)  # fmt: skip
            wait_until(
                "the app's pings through the UDP relay",
                lambda: app_endpoint(user).startswith(RELAY_IP + ":") and pings(user),
                ROAM_WITHIN_S,
            )
            took = time.monotonic() - lost
            print(f"direct device onto the relay: pings again after {took:.1f} s")
            session = device_session(system, phone["address"])
            relay = f"{RELAY_IP}:{session['relay_port']}"
            assert app_endpoint(user) == relay  # `wg show` in the app's namespace
            assert endpoints(lab.node, system.node.interface)[phone["public_key"]] == relay
            assert session["client_seen"].startswith(client_public(lab) + ":")
            assert pings(user, count=3)
            assert lab.whoami(user.host)["ip"] == NEW_HOME_PUBLIC  # still out through the node
            wait_until("higgsvpn devices to say relayed",
                       lambda: devices(user)["phone"]["state"] == "relayed", 15)  # fmt: skip
            listed = devices(user)["phone"]
            assert (listed["path"], listed["endpoint"]) == ("direct", mapped)  # its config
            assert "relayed" in user.vpn("devices").stdout

            before = used_bytes(system, user)
            assert pings(user, count=20, size=1000)  # about 20 x 2 x 1 kB through the relay
            wait_until(
                "the device's bytes in the account's usage",
                lambda: used_bytes(system, user) >= before + 40_000,
                30,
            )
            assert app_endpoint(user) == relay  # it stayed on the relay
        finally:
            restore_home_address(lab)
    finally:
        if app is not None:
            app.stop()
        lab.set_nat("client_router", "cone")
    user.vpn("revoke-device", "phone")
    assert "phone" not in devices(user)
