"""The owner page's data and the exporter, from a stand-in agent (no interface, no root)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from higgs.node.dashboard.app import _Rate, owner_data
from higgs.node.dashboard.exporter import node_registry
from higgs.node.metrics import Budget
from higgs.node.ownerstate import is_paused, set_paused
from higgs.node.settings import NodeSettings

KEY = "x" * 43 + "="


class FakeAgent:
    def __init__(self, state_dir: Path) -> None:
        self.settings = NodeSettings(state_dir=state_dir)
        self.budget = Budget(
            path=state_dir / "budget.json", cap_bytes=10_000_000, used_bytes=2_500_000
        )

    def status(self) -> dict[str, Any]:
        return {
            "peers": [
                {"public_key": KEY, "allowed_ips": ["10.77.0.9/32"], "rx_bytes": 1_000_000,
                 "tx_bytes": 3_000_000, "last_handshake_s": 4.0}
            ],
            "sessions": 1,
            "server": {"state": "online", "heartbeats": 7},
        }  # fmt: skip

    def set_paused(self, paused: bool) -> None:
        set_paused(self.settings.state_dir, paused)


def test_clients_are_anonymised_and_the_month_is_against_the_cap(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path)
    data = owner_data(agent, _Rate())
    text = json.dumps(data)
    assert KEY not in text
    assert "10.77.0.9" not in text
    assert data["tables"]["clients"]["rows"] == [["client 1", "1.0 MB", "3.0 MB", "4 s ago"]]
    assert data["fields"]["month"] == "2.5 MB of 10.0 MB cap"
    assert data["fields"]["mapping"] == "not configured"
    assert data["fields"]["state"] == "taking sessions"
    assert ["blocked TCP ports", "25"] in data["tables"]["protections"]["rows"]
    agent.set_paused(True)
    assert is_paused(tmp_path)
    assert owner_data(agent, _Rate())["fields"]["state"].startswith("paused")


def test_exporter_reads_the_agent_at_scrape_time(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path)
    text = generate_latest(node_registry(agent)).decode()
    assert "higgs_node_paused 0.0" in text
    assert 'higgs_node_peer_bytes_total{direction="to_clients"} 3e+06' in text
    assert "higgs_node_month_cap_bytes 1e+07" in text
    agent.set_paused(True)
    assert "higgs_node_paused 1.0" in generate_latest(node_registry(agent)).decode()
