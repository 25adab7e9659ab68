"""The client's kill switch in a namespace, for each backend: only the tunnel and the allowed
endpoints get through; IPv6 is blocked; a container behind the client gets out through the
tunnel only; removal gives everything back."""

from __future__ import annotations

import ipaddress as ia
from collections.abc import Callable

import pytest

from higgs.osnet.firewall import Endpoint, FirewallBackend, FirewallNames, KillSwitchPolicy

from .conftest import KillWorld, make_backend, ruleset

pytestmark = pytest.mark.root

Register = Callable[[FirewallBackend], FirewallBackend]


PROBES = {
    "endpoint tcp 443": "tcp:203.0.113.5:443",
    "endpoint udp 51820": "udp:203.0.113.5:51820",
    "endpoint other port": "tcp:203.0.113.5:80",
    "other host": "tcp:203.0.113.6:80",
    "through tunnel": "tcp:10.99.0.1:80",
    "ipv6 outside": "tcp:2001:db8:51::1:80",
    "loopback": "tcp:127.0.0.1:9",
}


# From the container behind the client (its traffic is forwarded, not the client's own).
BOX_PROBES = {
    "box: other host": "tcp:203.0.113.6:80",
    "box: endpoint": "tcp:203.0.113.5:443",
    "box: through tunnel": "tcp:10.99.0.1:80",
}


def reachable(kw: KillWorld) -> dict[str, bool]:
    got = kw.client.probe(*PROBES.values())
    box = kw.container.probe(*BOX_PROBES.values())
    return {k: not got[v].startswith("ERR") for k, v in PROBES.items()} | {
        k: not box[v].startswith("ERR") for k, v in BOX_PROBES.items()
    }


def test_kill_switch(
    kill_world: KillWorld, kind: str, fw_names: FirewallNames, register: Register
) -> None:
    everything = dict.fromkeys([*PROBES, *BOX_PROBES], True)
    assert reachable(kill_world) == everything  # the probes can fail
    before = ruleset(kind, kill_world.client)

    backend = register(make_backend(kind, fw_names, kill_world.client))
    backend.apply(
        KillSwitchPolicy(
            names=fw_names,
            tunnel_if="kt0",
            endpoints=(
                Endpoint(ia.ip_address("203.0.113.5"), 443, "tcp"),
                Endpoint(ia.ip_address("203.0.113.5"), 51820, "udp"),
            ),
        )
    )
    assert reachable(kill_world) == {
        "endpoint tcp 443": True,
        "endpoint udp 51820": True,
        "endpoint other port": False,
        "other host": False,
        "through tunnel": True,
        "ipv6 outside": False,
        "loopback": True,
        # Forwarded traffic: the tunnel only — not even the client's own endpoint.
        "box: other host": False,
        "box: endpoint": False,
        "box: through tunnel": True,
    }
    # Refused at once (no waiting for a timeout): applications fail fast.
    assert kill_world.client.ask1("tcp", "203.0.113.6", 80) != "ERR timeout"
    assert backend.status().kill_switch

    backend.remove()
    assert ruleset(kind, kill_world.client) == before
    assert reachable(kill_world) == everything
