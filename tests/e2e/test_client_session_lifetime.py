"""A session lives exactly as long as its client: renewed while connected, expired after a crash.

The server runs with a 6 s session TTL (the default is 10 minutes), so the client's renewal
(every TTL/3, at least every 5 s) and the server's expiry both happen within the test. What a
user would check: the tunnel keeps working well past the TTL; once the client is gone without
a goodbye, the server closes the session as ``expired`` and the node drops the client's peer.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.client_system import (
    Client,
    System,
    home_public,
    needs_node,
    running_system,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root, needs_node]

TTL_S = 6
# Expiry is held off while the node reports a fresh handshake (a direct-mode client that
# never renews): keep that window short too, and the heartbeats that report it frequent.
SERVER_ENV = {
    "BOSON_SESSION_TTL_S": str(TTL_S),
    "BOSON_HANDSHAKE_FRESH_S": "3",
    "BOSON_HEARTBEAT_INTERVAL_S": "2",
    "BOSON_SWEEP_INTERVAL_S": "1",
}


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(
        tmp_path_factory.mktemp("lifetime"), direct=False, server_env=SERVER_ENV
    ) as system:
        yield system


def _session(system: System, session_id: str) -> dict[str, Any]:
    listing = json.loads(system.server.cli("sessions", "--json"))
    items = listing["sessions"] if isinstance(listing, dict) else listing
    (row,) = [s for s in items if s["session_id"] == session_id]
    return dict(row)


def _node_peers(system: System) -> set[str]:
    out = system.lab.node.run(["wg", "show", system.node.interface, "peers"], timeout=10)
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def _client_key(client: Client) -> str:
    out = client.host.run(["wg", "show", client.interface, "public-key"], timeout=10)
    return out.stdout.strip()


def test_a_connected_client_outlives_the_session_ttl(short: System) -> None:
    client = short.client()
    answer = client.connect("--mode", "relay")
    session_id = str(answer["session_id"])
    key = _client_key(client)
    first_expiry = _session(short, session_id)["expires_at"]

    # Three TTLs: without renewal the session would have expired twice over.
    time.sleep(3 * TTL_S)

    row = _session(short, session_id)
    assert row["state"] == "open", f"the session did not survive its TTL: {row}"
    assert row["expires_at"] > first_expiry, "the expiry never moved: no renewal"
    assert key in _node_peers(short), "the node dropped a live client's peer"
    assert short.lab.whoami(client.host)["ip"] == home_public(short.lab)
    assert client.status()["session_id"] == session_id, "the client had to take a new session"
    client.disconnect()
    assert _session(short, session_id)["state"] == "closed"
    wait_until("the node to drop the peer", lambda: key not in _node_peers(short), 15)


def test_a_crashed_client_session_expires_and_the_node_drops_the_peer(short: System) -> None:
    client = short.client()
    answer = client.connect("--mode", "relay")
    session_id = str(answer["session_id"])
    key = _client_key(client)
    assert key in _node_peers(short)

    pid = int((client.state_dir / "daemon.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)  # no goodbye, no more renewals
    wait_until("the daemon to die", lambda: not Path(f"/proc/{pid}").exists(), 10, every=0.1)

    wait_until(
        "the server to expire the session",
        lambda: _session(short, session_id)["state"] == "closed",
        TTL_S + 20,
    )
    assert _session(short, session_id)["close_reason"] == "expired"
    wait_until("the node to drop the expired peer", lambda: key not in _node_peers(short), 15)

    client.vpn("cleanup")
    client.connected = False
