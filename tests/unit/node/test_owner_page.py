"""The owner page's data and the exporter, from a stand-in agent (no interface, no root)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import generate_latest

from higgs.node.dashboard.app import _Rate, owner_data, serve_dashboard
from higgs.node.dashboard.exporter import node_registry
from higgs.node.metrics import Budget
from higgs.node.ownerstate import dashboard_token, is_paused, set_paused
from higgs.node.settings import NodeSettings
from tests.grafana import exported_names, grafana_names

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_served_on_loopback_with_login_and_a_real_metrics_scrape(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path)
    port = _free_port()
    agent.settings = NodeSettings(state_dir=tmp_path, dashboard={"listen": f"127.0.0.1:{port}"})
    task = asyncio.create_task(serve_dashboard(agent))
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            for _ in range(100):
                try:
                    r = await http.get("/")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            assert (r.status_code, r.headers["location"]) == (303, "/login")
            token = (tmp_path / "dashboard.token").read_text().strip()
            r = await http.post("/login", data={"token": token}, headers={"Origin": base})
            assert r.status_code == 303
            page = await http.get("/")
            assert "client 1" in page.text
            assert token not in page.text
            csrf = page.text.split('name="csrf" content="')[1].split('"')[0]
            r = await http.post("/pause", data={"csrf": "bad"}, headers={"Origin": base})
            assert r.status_code == 403
            assert not is_paused(tmp_path)
            r = await http.post("/pause", data={"csrf": csrf}, headers={"Origin": base})
            assert r.status_code == 303
            assert is_paused(tmp_path)
            metrics = (await http.get("/metrics")).text
        missing = grafana_names("higgs_node_") - exported_names(metrics)
        assert not missing, f"packaging/grafana/higgs.json uses unexported {missing}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_port_in_use_does_not_end_the_task(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        agent = FakeAgent(tmp_path)
        agent.settings = NodeSettings(state_dir=tmp_path, dashboard={"listen": f"127.0.0.1:{port}"})
        task = asyncio.create_task(serve_dashboard(agent))
        await asyncio.sleep(0.3)
        assert not task.done()  # a task that ended would stop the agent
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_port_mapping_line() -> None:
    from higgs.node.dashboard.app import _mapping_text

    assert _mapping_text(None) == ""
    assert _mapping_text({"setting": "off"}) == ""
    mapped = {"setting": "auto", "method": "pcp", "external_endpoint": "203.0.113.10:51820",
              "verified": True}  # fmt: skip
    assert _mapping_text(mapped) == "pcp: 203.0.113.10:51820 (verified from outside)"
    failed = {"setting": "auto", "method": None, "state": "failed",
              "attempts": [{"method": "upnp", "reason": "no_gateway"}]}  # fmt: skip
    assert _mapping_text(failed) == "no mapping (failed): upnp: no_gateway"


async def test_a_login_survives_a_restart_of_the_agent(tmp_path: Path) -> None:
    """The owner's session lives in the state directory (hashed, 0600), not in the process."""
    from higgs.node.dashboard.app import COOKIE, create_app
    from higgs.node.ownerstate import DASHBOARD_SESSIONS_FILE

    base = "http://127.0.0.1:9586"
    token = dashboard_token(tmp_path)

    def client(app: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)

    async with client(create_app(FakeAgent(tmp_path))) as first:
        r = await first.post("/login", data={"token": token}, headers={"Origin": base})
        assert r.status_code == 303
        sid = r.cookies[COOKIE]
        csrf = (await first.get("/")).text.split('name="csrf" content="')[1].split('"')[0]
    stored = tmp_path / DASHBOARD_SESSIONS_FILE
    assert stored.stat().st_mode & 0o777 == 0o600
    assert sid not in stored.read_text()
    async with client(create_app(FakeAgent(tmp_path))) as second:  # the agent restarted
        second.cookies.set(COOKIE, sid)
        page = await second.get("/")
        assert page.status_code == 200, page.headers
        assert f'name="csrf" content="{csrf}"' in page.text  # the same session
        r = await second.post("/pause", data={"csrf": csrf}, headers={"Origin": base})
        assert r.status_code == 303
        assert is_paused(tmp_path)
        second.cookies.set(COOKIE, sid[:-2] + "xx")
        assert (await second.get("/")).status_code == 303  # to the login


async def test_log_out_ends_the_session_here_and_after_a_restart(tmp_path: Path) -> None:
    """On a shared PC the owner logs out: the session is gone from the state directory, so
    the old cookie opens nothing, not even after the agent restarted; a forged form does
    not log anybody out."""
    from higgs.node.dashboard.app import COOKIE, create_app

    base = "http://127.0.0.1:9586"
    token = dashboard_token(tmp_path)

    def client(app: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)

    async with client(create_app(FakeAgent(tmp_path))) as browser:
        r = await browser.post("/login", data={"token": token}, headers={"Origin": base})
        sid = r.cookies[COOKIE]
        page = (await browser.get("/")).text
        assert 'action="/logout"' in page
        csrf = page.split('name="csrf" content="')[1].split('"')[0]
        r = await browser.post("/logout", data={"csrf": csrf}, headers={"Origin": "http://evil"})
        assert r.status_code == 403
        assert (await browser.get("/")).status_code == 200  # still logged in
        r = await browser.post("/logout", data={"csrf": csrf}, headers={"Origin": base})
        assert (r.status_code, r.headers["location"]) == (303, "/login")
        assert "Max-Age=0" in r.headers["set-cookie"]
        browser.cookies.set(COOKIE, sid)  # the old cookie, kept by a careless browser
        assert (await browser.get("/")).status_code == 303
    async with client(create_app(FakeAgent(tmp_path))) as restarted:
        restarted.cookies.set(COOKIE, sid)
        assert (await restarted.get("/")).status_code == 303
