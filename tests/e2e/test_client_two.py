"""Two higgsvpn clients on one node at once, each behind the same client router."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.client_system import (
    System,
    home_public,
    running_system,
    two_client_plan,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture
def two(tmp_path: Path) -> Iterator[System]:
    with running_system(tmp_path, direct=False, plan=two_client_plan()) as system:
        yield system


def test_two_clients_on_one_node_at_once(two: System) -> None:
    lab = two.lab
    first = two.client()
    second = two.client(host=lab.host("client2"))
    a = first.connect("--mode", "relay")
    b = second.connect("--mode", "relay")
    assert a["address"] != b["address"]
    assert a["node_id"] == b["node_id"]
    for c in (first, second):
        assert lab.whoami(c.host)["ip"] == home_public(lab)
        c.host.run(["ping", "-c", "1", "-W", "3", lab.internet.ip], timeout=20)
    first.disconnect()
    # The other client is unaffected.
    assert lab.whoami(second.host)["ip"] == home_public(lab)
    second.disconnect()
