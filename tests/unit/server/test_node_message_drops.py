"""Bad control messages from authenticated nodes: every one counted by reason, the log bounded."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from higgs.common.ratelog import BURST
from higgs.server.metrics import ServerMetrics
from higgs.server.services.events import ServerEvents


def dropped(metrics: ServerMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "higgs_node_messages_dropped_total", {"reason": reason}
    )
    assert value is not None
    return value


async def test_malformed_and_unexpected_messages_are_counted_and_the_log_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = ServerMetrics()
    events = ServerEvents(metrics)
    assert dropped(metrics, "malformed") == 0  # the series exist before the first drop
    caplog.set_level(logging.INFO, logger="higgs.server.services.events")
    bad: list[dict[str, Any]] = [
        {"type": "peer_stats"},  # missing peers
        {"type": "peer_stats", "peers": "nope"},
        {"type": "peer_stats", "peers": [{"public_key": 5}]},
        {"type": "no_such_type"},  # well-formed, of a type this server does not know
    ]
    for i in range(500):
        await events.node_message("n_flood", bad[i % len(bad)])
    hello = {"type": "hello", "version": 1, "node_id": "n_flood", "heartbeat_interval_s": 10}
    for _ in range(50):
        await events.node_message("n_flood", hello)  # valid, but nothing a node sends
    assert dropped(metrics, "malformed") == 375
    assert dropped(metrics, "unexpected") == 125 + 50
    malformed = [r for r in caplog.records if r.getMessage() == "malformed control message dropped"]
    ignored = [r for r in caplog.records if r.getMessage() == "control message ignored"]
    assert len(malformed) == BURST
    assert len(ignored) == BURST
    # Another node's first bad message is still logged.
    await events.node_message("n_other", bad[0])
    assert any(getattr(r, "node_id", None) == "n_other" for r in caplog.records)
