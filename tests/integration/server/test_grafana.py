"""The Grafana dashboard queries only metrics the server really exports (a real scrape of a
real server with its real relay hub)."""

from __future__ import annotations

from pathlib import Path

import httpx

from higgs.server.app import running_server
from tests.grafana import exported_names, grafana_names
from tests.integration.server.conftest import make_settings


async def test_every_server_metric_of_the_grafana_dashboard_is_exported(tmp_path: Path) -> None:
    async with (
        running_server(make_settings(tmp_path, None)) as server,
        httpx.AsyncClient(base_url=server.api_url, timeout=10) as http,
    ):
        await http.get("/healthz")  # a request, so the latency histogram has a series
        text = (await http.get("/metrics")).text
    wanted = grafana_names() - grafana_names("higgs_node_")
    assert "higgs_relay_datagrams_total" in wanted  # the dashboard has server panels at all
    missing = wanted - exported_names(text)
    assert not missing, f"packaging/grafana/higgs.json uses unexported {missing}"
