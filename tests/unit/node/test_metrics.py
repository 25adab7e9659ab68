from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from higgs.node.metrics import Budget, collect, heartbeat_body


@dataclass(frozen=True)
class Row:
    public_key: str
    rx_bytes: int
    tx_bytes: int
    latest_handshake: int


KA = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
KB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def test_collect_sums_counters_and_ages_handshakes(tmp_path: Path) -> None:
    peers = [Row(KA, 100, 50, 1000), Row(KB, 10, 5, 0)]
    m = collect(peers, now=1030.0)
    assert (m.peers, m.rx_bytes, m.tx_bytes) == (2, 110, 55)
    assert m.handshake_ages == {KA: 30.0, KB: None}
    assert 0 <= m.cpu_percent <= 100 * 64
    assert 0 < m.memory_percent <= 100
    assert m.budget_left_mb is None
    body = heartbeat_body(m, peers)
    assert "budget_left_mb" not in body  # no cap: omitted, the server reads it as unlimited
    assert body["peer_stats"][1] == {
        "public_key": KB,
        "rx_bytes": 10,
        "tx_bytes": 5,
    }  # no handshake yet: last_handshake_s omitted (null)


def test_budget_counts_deltas_survives_restart_and_counter_resets(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    b = Budget.load(path, cap_gb=0.000002)  # 2000 bytes
    b.update([Row("a", 500, 0, 0)])
    b.update([Row("a", 800, 0, 0), Row("b", 100, 0, 0)])
    assert b.used_bytes == 900
    assert b.left_mb == (2000 - 900) / 1e6
    # The node restarts: WireGuard counters start again from zero.
    b2 = Budget.load(path, cap_gb=0.000002)
    assert b2.used_bytes == 900
    b2.update([Row("a", 1200, 0, 0)])
    assert b2.exhausted
    assert b2.left_mb == 0
    assert json.loads(path.read_text())["used_bytes"] == 2100


def test_damaged_budget_file_starts_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    path.write_text("{not json")
    b = Budget.load(path, cap_gb=0)
    assert b.used_bytes == 0
    assert b.left_mb is None
    assert not b.exhausted


def test_a_peer_removed_between_heartbeats_still_counts_its_last_bytes(tmp_path: Path) -> None:
    b = Budget.load(tmp_path / "budget.json", cap_gb=0)
    b.update([Row("a", 100, 0, 0), Row("b", 10, 0, 0)])
    b.settle([Row("a", 400, 50, 0)])  # its final counters, right before its removal
    assert b.used_bytes == 460
    # A heartbeat whose rows were read before the removal adds nothing twice ...
    b.update([Row("a", 400, 50, 0), Row("b", 30, 0, 0)])
    assert b.used_bytes == 480
    # ... and once it is gone, the same key as a new peer counts from zero.
    b.update([Row("b", 30, 0, 0)])
    b.update([Row("a", 5, 0, 0), Row("b", 30, 0, 0)])
    assert b.used_bytes == 485
    assert json.loads((tmp_path / "budget.json").read_text())["used_bytes"] == 485
