"""No IPv6 leak: the client's network has global IPv6, the tunnel is IPv4 only, because the
node's uplink has no IPv6 (the node finds that out itself) or its owner turned IPv6 off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.client_system import (
    System,
    home_public,
    needs_node,
    running_system,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root, needs_node]


@pytest.fixture(params=["no-ipv6-uplink", "ipv6-off"])
def v6(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[System]:
    if request.param == "no-ipv6-uplink":
        kw: dict[str, Any] = {"ipv6_without": ("node",)}
    else:
        kw = {"node_args": ("--ipv6", "off")}
    with running_system(tmp_path, direct=False, ipv6=True, **kw) as system:
        yield system


def test_ipv6_is_blocked_while_the_ipv4_tunnel_is_up(v6: System) -> None:
    lab = v6.lab
    client = v6.client()
    own = lab.whoami(client.host, ipv6=True)["ip"]
    assert own == lab.client.ip6, "the lab gives the client global IPv6"
    answer = client.connect("--mode", "relay")
    assert ":" not in answer["address"], "a node without IPv6 offered an IPv6 address"
    assert lab.whoami(client.host)["ip"] == home_public(lab)
    with pytest.raises(Exception):  # noqa: B017,PT011 - curl fails: rejected by the kill switch
        lab.whoami(client.host, ipv6=True, timeout=4)
    client.disconnect()
    assert lab.whoami(client.host, ipv6=True)["ip"] == own
