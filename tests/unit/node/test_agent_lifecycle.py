"""The node agent's setup and teardown over a fake host (tests/unit/node/fakehost.py): the
real Agent, NodeHost and Journal, no root, no socket (the server API goes through
httpx.MockTransport and answers 503, so the node runs as with an unreachable server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from higgs.common.errors import HiggsError
from higgs.common.keys import PrivateKey
from higgs.node.agent import Agent, AgentError
from higgs.node.host import NodeHost
from higgs.node.settings import NodeSettings
from tests.unit.node.fakehost import FakeFailure, FakeHost, uplink

IFB = "ifb-higgsnode"


def _settings(tmp_path: Path, **extra: Any) -> NodeSettings:
    return NodeSettings(
        server="http://198.51.100.10:8080",
        enroll_key="hge_" + "k" * 32,
        state_dir=tmp_path,
        dns={"enabled": False},
        dashboard={"enabled": False},
        port_mapping="off",
        shaping={"total_down_mbit": 50, "total_up_mbit": 10},
        **extra,
    )


def _unreachable(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"error": "unavailable", "message": "down for the test"})


def _agent(settings: NodeSettings, fake: FakeHost) -> Agent:
    host = NodeHost(settings, ops=fake)
    return Agent(
        settings, host, PrivateKey.generate(), server_transport=httpx.MockTransport(_unreachable)
    )


def _journal(settings: NodeSettings) -> list[dict[str, Any]]:
    path = settings.state_dir / "journal.json"
    if not path.exists():
        return []
    entries: list[dict[str, Any]] = json.loads(path.read_text())["entries"]
    return entries


async def _until(cond: Any, what: str) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def _start(agent: Agent, fake: FakeHost) -> asyncio.Task[None]:
    task = asyncio.create_task(agent.run(fake.uplink))
    await _until(lambda: agent.peers is not None or task.done(), "the node to be up")
    if task.done():
        task.result()  # raises what stopped it
        raise AssertionError("the node stopped during setup")
    return task


def _initial(fake: FakeHost) -> dict[str, Any]:
    return {
        "sysctls": dict(fake.sysctls),
        "links": dict(fake.interfaces),
        "firewall": fake.firewall_uplink,
        "shaping": fake.shaping,
    }


def _dos(fake: FakeHost) -> list[str]:
    return [e.removeprefix("do ") for e in fake.events if e.startswith("do ")]


# The host's set-up, in order, as every start makes it (each change journaled first).
SETUP_STEPS = ["link higgsnode", f"shaping {IFB}", "sysctl net.ipv4.ip_forward=1", "firewall eth0"]


def _undone(fake: FakeHost) -> list[str]:
    return [e.split()[1] for e in fake.events if e.startswith("undo ")]


async def test_setup_makes_each_change_in_order_journaled_first(tmp_path: Path) -> None:
    fake = FakeHost()
    settings = _settings(tmp_path)
    agent = _agent(settings, fake)
    task = await _start(agent, fake)
    try:
        assert _dos(fake) == SETUP_STEPS
        assert fake.unjournaled == []
        iface = fake.interfaces["higgsnode"]
        assert iface.up and iface.mtu == agent.mtu.mtu if agent.mtu else False
        assert iface.addresses == [str(settings.node_address)]
        assert iface.listen_port == settings.listen_port
        assert fake.sysctls["net.ipv4.ip_forward"] == "1"
        # Every change in effect has its undo on disk, in the order made.
        undos = [e["undo"]["argv"][1] for e in _journal(settings)]
        assert undos == ["link", "shaping", "sysctl", "firewall"]
    finally:
        agent.request_stop("test")
        await task


async def test_stop_undoes_every_change_newest_first(tmp_path: Path) -> None:
    fake = FakeHost()
    before = _initial(fake)
    settings = _settings(tmp_path)
    agent = _agent(settings, fake)
    task = await _start(agent, fake)
    agent.request_stop("test")
    await task
    assert _undone(fake) == ["firewall", "sysctl", "shaping", "link"]
    assert "undo sysctl net.ipv4.ip_forward 0" in fake.events
    assert _initial(fake) == before
    assert _journal(settings) == []


async def test_ipv6_uplink_forwards_v6_and_puts_accept_ra_back(tmp_path: Path) -> None:
    fake = FakeHost(ipv6=True)
    before = _initial(fake)
    settings = _settings(tmp_path, ipv6="auto")
    host = NodeHost(settings, ops=fake)
    key = PrivateKey.generate()
    host.decide_ipv6(fake.uplink, key.public_b64())
    agent = Agent(settings, host, key, server_transport=httpx.MockTransport(_unreachable))
    task = await _start(agent, fake)
    assert host.tunnel_v6 is not None
    assert fake.interfaces["higgsnode"].addresses == [
        str(settings.node_address),
        str(host.tunnel_v6),
    ]
    # Forwarding would make the kernel drop the uplink's router advertisements (accept_ra 1).
    assert fake.sysctls["net.ipv6.conf.eth0.accept_ra"] == "2"
    assert fake.sysctls["net.ipv6.conf.all.forwarding"] == "1"
    agent.request_stop("test")
    await task
    assert _initial(fake) == before


async def test_a_failure_midway_undoes_what_was_done_and_nothing_after(tmp_path: Path) -> None:
    fake = FakeHost()
    fake.fail = {"sysctl"}
    before = _initial(fake)
    settings = _settings(tmp_path)
    agent = _agent(settings, fake)
    with pytest.raises(FakeFailure):
        await agent.run(fake.uplink)
    # The firewall was never reached; the half-made sysctl and all before it are undone.
    assert _dos(fake) == ["link higgsnode", f"shaping {IFB}", "sysctl net.ipv4.ip_forward=1"]
    assert _undone(fake) == ["sysctl", "shaping", "link"]
    assert _initial(fake) == before
    assert _journal(settings) == []
    assert agent.peers is None  # the links were not started


async def test_a_failed_undo_is_reported_the_rest_still_run_and_a_restart_finishes_it(
    tmp_path: Path,
) -> None:
    fake = FakeHost()
    before = _initial(fake)
    settings = _settings(tmp_path)
    agent = _agent(settings, fake)
    task = await _start(agent, fake)
    fake.fail_undo = {"shaping"}
    agent.request_stop("test")
    with pytest.raises(AgentError, match=r"(?s)could not be undone.*undo shaping failed"):
        await task
    assert _undone(fake) == ["firewall", "sysctl", "link"]
    assert [e["undo"]["argv"][1] for e in _journal(settings)] == ["shaping"]
    agent.host.close()
    # The next start (or `higgsnode cleanup`) replays what is left.
    fake.fail_undo = set()
    assert NodeHost(settings, ops=fake).recover() == []
    assert _initial(fake) == before
    assert _journal(settings) == []


async def test_a_crashed_run_is_undone_by_the_next_start(tmp_path: Path) -> None:
    fake = FakeHost()
    before = _initial(fake)
    settings = _settings(tmp_path)
    crashed = NodeHost(settings, ops=fake)
    crashed.bring_up_interface(PrivateKey.generate(), 1420)
    crashed.enable_forwarding(fake.uplink)
    crashed.close()  # the process died: its journal stays, the host keeps its changes
    assert fake.interfaces
    assert fake.sysctls["net.ipv4.ip_forward"] == "1"
    assert NodeHost(settings, ops=fake).recover() == []
    assert _undone(fake) == ["sysctl", "link"]
    assert _initial(fake) == before


async def test_the_recovery_reads_the_crashed_runs_peer_endpoints_before_removing_it(
    tmp_path: Path,
) -> None:
    """The restarted node initiates to its clients (higgs.node.peers): their endpoints are
    read off the crashed run's interface before the recovery removes it."""
    fake = FakeHost()
    settings = _settings(tmp_path)
    crashed = NodeHost(settings, ops=fake)
    crashed.bring_up_interface(PrivateKey.generate(), 1420)
    crashed.close()
    fake.interfaces["higgsnode"].peer_endpoints = {
        "direct=": "203.0.113.7:51000",
        "bridged=": "127.0.0.1:40123",
    }
    restarted = NodeHost(settings, ops=fake)
    assert restarted.recover() == []
    assert restarted.previous_endpoints == {
        "direct=": "203.0.113.7:51000",
        "bridged=": "127.0.0.1:40123",
    }
    assert fake.events.index("read peers higgsnode") < fake.events.index("undo link higgsnode")
    assert "higgsnode" not in fake.interfaces


async def test_nat_follows_the_uplink_when_the_default_route_moves(tmp_path: Path) -> None:
    fake = FakeHost()
    settings = _settings(tmp_path)
    agent = _agent(settings, fake)
    task = await _start(agent, fake)
    try:
        fake.uplink = uplink("wlan0")
        await _until(lambda: fake.firewall_uplink == "wlan0", "NAT on the new uplink")
        assert "do firewall-uplink wlan0" in fake.events
        assert agent.uplink is not None
        assert agent.uplink.name == "wlan0"
    finally:
        agent.request_stop("test")
        await task
    assert fake.firewall_uplink is None


def _registered_before(settings: NodeSettings) -> None:
    """identity.json as an earlier run's registration left it: this start is a restart."""
    (settings.state_dir / "identity.json").write_text(
        json.dumps(
            {
                "server": settings.server,
                "node_id": "n_restarted",
                "node_token": "hgn_" + "t" * 32,
                "relay_url": "ws://198.51.100.10:8081/v1/relay/node",
                "heartbeat_interval_s": 15.0,
            }
        )
    )


async def test_a_restart_sets_the_host_up_while_registering(tmp_path: Path) -> None:
    """With an identity the registration overlaps the host's set-up; the steps are the same,
    in the same order, each journaled first (here the server is unreachable: the node
    serves anyway, as on a first start)."""
    fake = FakeHost()
    settings = _settings(tmp_path)
    _registered_before(settings)
    agent = _agent(settings, fake)
    task = await _start(agent, fake)
    try:
        assert _dos(fake) == SETUP_STEPS
        assert fake.unjournaled == []
        assert agent.server is not None
        assert agent.server.status.state == "unreachable"  # its one try at start was made
    finally:
        agent.request_stop("test")
        await task


async def test_a_restarted_node_the_server_refuses_undoes_what_it_set_up_meanwhile(
    tmp_path: Path,
) -> None:
    """The node was deleted while it was down: the registration is refused after (or while)
    the host was set up; the node stops with the server's reason and the host is as before."""
    fake = FakeHost()
    before = _initial(fake)
    settings = _settings(tmp_path).model_copy(update={"enroll_key": None})
    _registered_before(settings)

    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "unauthorized", "message": "unknown node"})

    host = NodeHost(settings, ops=fake)
    agent = Agent(
        settings, host, PrivateKey.generate(), server_transport=httpx.MockTransport(refused)
    )
    with pytest.raises(HiggsError, match="no longer accepts this node's token"):
        await agent.run(fake.uplink)
    assert "link higgsnode" in _dos(fake)  # the set-up ran alongside
    assert _initial(fake) == before
    assert _journal(settings) == []
    assert agent.control is None  # no control link was started
