"""The connect flow's decisions, through its two seams: the host (osnet) and the relay path.

The fake host records what the flow asks of it and completes a WireGuard handshake only for
the endpoints the test says are reachable, which is what a real node behind NAT does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from higgs.client.connect import ConnectError, Connector, Endpoint, PeerStats
from higgs.client.server_api import ServerApi
from higgs.client.settings import ClientSettings, load_client_settings
from higgs.client.timings import PhaseTimer
from higgs.common.keys import PrivateKey
from higgs.protocol.api import RouteResponse

NODE_KEY = PrivateKey(bytes(range(1, 33))).public_b64()
CLIENT_KEY = PrivateKey(bytes(range(32)))


def _route(*, direct: bool = True, relay: bool = True) -> RouteResponse:
    return RouteResponse.model_validate(
        {
            "session_id": "s_0123456789abcdef",
            "expires_at": datetime.now(UTC).isoformat(),
            "ttl_s": 600,
            "node": {"node_id": "n_0123456789abcdef", "country": "DE", "region": "Lab"},
            "wireguard": {
                "address": "10.77.0.5/32",
                "node_public_key": NODE_KEY,
                "dns": ["10.77.0.1"],
                "mtu": 1380,
                "allowed_ips": ["0.0.0.0/0", "::/0"],
                "persistent_keepalive": 25,
            },
            "direct": {"endpoint": "203.0.113.10:51820"} if direct else None,
            "relay": (
                {"url": "ws://198.51.100.10:8081/v1/relay/session", "token": "hgr_x", "channel": 7}
                if relay
                else None
            ),
        }
    )


class FakeApi(ServerApi):
    def __init__(self, route: RouteResponse) -> None:
        super().__init__("http://198.51.100.10:8080", "hgc_" + "t" * 20)
        self.answer = route
        self.asked: list[dict[str, Any]] = []

    async def route(self, public_key: str, **kw: Any) -> RouteResponse:
        self.asked.append({"public_key": public_key, **kw})
        return self.answer


class FakeHost:
    def __init__(self, reachable: set[str]) -> None:
        self.reachable = reachable
        self.calls: list[tuple[str, Any]] = []
        self.endpoint: str | None = None
        self.handshake = 0.0
        self.on_the_loop: list[str] = []  # calls made from the event loop's thread

    def _called(self, name: str, args: Any) -> None:
        self.calls.append((name, args))
        self._where(name)

    def _where(self, name: str) -> None:
        # The real host runs commands and waits for wireguard-go: never on the event loop.
        if threading.current_thread() is threading.main_thread():
            self.on_the_loop.append(name)

    def create(
        self, private_key: PrivateKey, address: str, mtu: int, timer: PhaseTimer | None = None
    ) -> None:
        self._called("create", (address, mtu))

    def reset_tunnel(self) -> None:
        self._called("reset", None)

    def set_peer(
        self, public_key: str, endpoint: str, allowed_ips: Sequence[str], keepalive: int | None
    ) -> None:
        self._called("peer", (endpoint, tuple(allowed_ips)))
        self.endpoint = endpoint
        if endpoint in self.reachable:
            self.handshake = time.time()

    def route(self, *, full: bool, prefixes: Sequence[str], exempt: Sequence[str] = ()) -> None:
        self._called("route", (full, tuple(prefixes)))
        self.exempt = tuple(exempt)

    def set_dns(self, servers: Sequence[str]) -> None:
        self._called("dns", tuple(servers))

    def kill_switch(self, *, allow_endpoints: Sequence[Endpoint]) -> None:
        self._called("kill_switch", tuple(allow_endpoints))

    def peer_stats(self) -> PeerStats | None:
        self._where("peer_stats")
        return PeerStats(self.handshake, 0, 0, self.endpoint)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class FakeRelay:
    def __init__(self, reason: str | None = None) -> None:
        self.started = False
        self.closed = False
        self._reason = reason

    @property
    def local_endpoint(self) -> str:
        return "127.0.0.1:40000"

    @property
    def closed_reason(self) -> str | None:
        return "closed" if self.closed else self._reason

    @property
    def reconnects(self) -> int:
        return 0

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True


def _settings(**kw: Any) -> ClientSettings:
    base = {"direct_timeout_s": 0.3, "handshake_timeout_s": 0.6, "interface": "hv-test"}
    return load_client_settings(environ={}, overrides={**base, **kw})


def _connector(
    settings: ClientSettings, route: RouteResponse, host: FakeHost, relay: FakeRelay
) -> Connector:
    return Connector(settings, FakeApi(route), CLIENT_KEY, host, lambda _r: relay)


async def test_auto_takes_direct_when_the_node_answers() -> None:
    host, relay = FakeHost({"203.0.113.10:51820"}), FakeRelay()
    tunnel = await _connector(_settings(), _route(), host, relay).connect()
    assert tunnel.mode == "direct"
    assert not relay.started
    # Order: interface, routing, DNS, kill switch, then the peer (no traffic before the switch).
    assert host.names() == ["create", "route", "dns", "kill_switch", "peer"]
    assert ("dns", ("10.77.0.1",)) in host.calls
    # The server (settings) and the relay (route) stay reachable outside the tunnel.
    assert host.exempt == ("127.0.0.1", "198.51.100.10")


async def test_auto_falls_back_to_the_relay() -> None:
    host, relay = FakeHost({"127.0.0.1:40000"}), FakeRelay()
    tunnel = await _connector(_settings(), _route(), host, relay).connect()
    assert tunnel.mode == "relay"
    assert relay.started
    assert not relay.closed
    peers = [args[0] for name, args in host.calls if name == "peer"]
    assert peers == ["203.0.113.10:51820", "127.0.0.1:40000"]


async def test_relay_mode_never_tries_direct() -> None:
    host, relay = FakeHost({"127.0.0.1:40000", "203.0.113.10:51820"}), FakeRelay()
    tunnel = await _connector(_settings(mode="relay"), _route(), host, relay).connect()
    assert tunnel.mode == "relay"
    assert [args[0] for name, args in host.calls if name == "peer"] == ["127.0.0.1:40000"]


async def test_direct_mode_without_endpoint_fails_before_touching_the_host() -> None:
    host, relay = FakeHost(set()), FakeRelay()
    with pytest.raises(ConnectError, match="no direct endpoint"):
        await _connector(_settings(mode="direct"), _route(direct=False), host, relay).connect()
    assert host.calls == []


async def test_no_handshake_anywhere_says_why_and_closes_the_relay() -> None:
    host, relay = FakeHost(set()), FakeRelay()
    with pytest.raises(ConnectError) as err:
        await _connector(_settings(), _route(), host, relay).connect()
    assert "direct" in str(err.value)
    assert "relay" in str(err.value)
    assert relay.closed


async def test_relay_refused_reports_the_relay_reason() -> None:
    host, relay = FakeHost(set()), FakeRelay(reason="relay token refused (4001)")
    with pytest.raises(ConnectError, match="relay token refused"):
        await _connector(_settings(mode="relay"), _route(), host, relay).connect()


async def test_split_tunnel_routes_only_prefixes_and_the_resolver() -> None:
    host, relay = FakeHost({"203.0.113.10:51820"}), FakeRelay()
    settings = _settings(split=["192.0.2.0/24"])
    await _connector(settings, _route(), host, relay).connect()
    assert ("route", (False, ("192.0.2.0/24", "10.77.0.1/32"))) in host.calls
    assert "kill_switch" not in host.names()  # split tunnel: off unless asked


async def test_kill_switch_lets_out_server_relay_and_node_only() -> None:
    host, relay = FakeHost({"203.0.113.10:51820"}), FakeRelay()
    await _connector(_settings(), _route(), host, relay).connect()
    (endpoints,) = [args for name, args in host.calls if name == "kill_switch"]
    assert set(endpoints) == {
        Endpoint("127.0.0.1", 8080, "tcp"),
        Endpoint("198.51.100.10", 8081, "tcp"),
        Endpoint("203.0.113.10", 51820, "udp"),
    }


async def test_switch_route_rebuilds_but_keeps_the_kill_switch() -> None:
    host, relay = FakeHost({"127.0.0.1:40000"}), FakeRelay()
    connector = _connector(_settings(mode="relay"), _route(), host, relay)
    first = await connector.connect()
    host.calls.clear()
    relay2 = FakeRelay()
    connector.relay_factory = lambda _r: relay2
    second = await connector.switch_route(first)
    assert relay.closed
    assert second.relay is relay2
    assert host.names() == ["reset", "create", "route", "dns", "kill_switch", "peer"]


async def test_ipv6_address_and_resolver_from_the_route_go_onto_the_interface() -> None:
    route = _route()
    wg = route.wireguard.model_copy(
        update={"address_v6": "fd12::5/128", "dns": ["10.77.0.1", "fd12::1"]}
    )
    route = route.model_copy(update={"wireguard": wg})
    host, relay = FakeHost({"203.0.113.10:51820"}), FakeRelay()
    tunnel = await _connector(_settings(), route, host, relay).connect()
    assert ("create", ("10.77.0.5/32, fd12::5/128", 1380)) in host.calls
    assert ("dns", ("10.77.0.1", "fd12::1")) in host.calls
    assert tunnel.address == "10.77.0.5/32, fd12::5/128"


async def test_without_ipv6_in_the_route_the_interface_stays_ipv4_only() -> None:
    host, relay = FakeHost({"203.0.113.10:51820"}), FakeRelay()
    await _connector(_settings(), _route(), host, relay).connect()
    assert ("create", ("10.77.0.5/32", 1380)) in host.calls


async def test_every_host_call_runs_off_the_event_loop() -> None:
    host, relay = FakeHost({"127.0.0.1:40000"}), FakeRelay()
    connector = _connector(_settings(), _route(), host, relay)
    first = await connector.connect()  # direct tried and given up, then the relay
    await connector.switch_route(first)
    assert {"create", "route", "dns", "kill_switch", "peer", "reset"} <= set(host.names())
    assert host.on_the_loop == []


async def test_the_connect_records_each_phase_in_order() -> None:
    host, relay = FakeHost({"127.0.0.1:40000"}), FakeRelay()
    echoed: list[str] = []

    async def pinger(target: str) -> float | None:
        echoed.append(target)
        return 1.0

    connector = Connector(
        _settings(), FakeApi(_route()), CLIENT_KEY, host, lambda _r: relay, pinger
    )
    await connector.connect()
    # Direct did not answer within its budget, the WebSocket relay did; then one echo.
    assert list(connector.timer.as_dict()) == [
        "relay_rtt",
        "route_request",
        "resolve",
        "routing",
        "dns",
        "kill_switch",
        "peer",
        "handshake_direct",
        "relay_start",
        "handshake_relay",
        "first_packet",
        "other",
        "total",
    ]
    assert connector.timer.as_dict()["handshake_direct"] >= 300  # direct_timeout_s = 0.3
    assert echoed == ["10.77.0.1"]


class LossyHost(FakeHost):
    """The first initiation to each endpoint is lost (the node has no peer yet, the relay
    has not learnt the node's leg); the next one gets its answer."""

    def __init__(self, reachable: set[str]) -> None:
        super().__init__(reachable)
        self.tries: dict[str, int] = {}

    def set_peer(
        self, public_key: str, endpoint: str, allowed_ips: Sequence[str], keepalive: int | None
    ) -> None:
        self.tries[endpoint] = self.tries.get(endpoint, 0) + 1
        self._called("peer", (endpoint, tuple(allowed_ips)))
        self.endpoint = endpoint
        if endpoint in self.reachable and self.tries[endpoint] > 1:
            self.handshake = time.time()


async def test_a_lost_first_initiation_is_sent_again_before_wireguards_retry() -> None:
    host, relay = LossyHost({"127.0.0.1:40000"}), FakeRelay()
    # A budget shorter than WireGuard's own retry of the initiation (5 s).
    settings = _settings(mode="relay", handshake_timeout_s=4.0)
    tunnel = await _connector(settings, _route(), host, relay).connect()
    assert tunnel.mode == "relay"
    assert host.tries == {"127.0.0.1:40000": 2}


async def test_a_moved_relay_hub_moves_the_websocket_path_to_a_new_link() -> None:
    host, first, second = FakeHost({"127.0.0.1:40000"}), FakeRelay(), FakeRelay()
    made: list[RouteResponse] = []

    def factory(route: RouteResponse) -> FakeRelay:
        made.append(route)
        return first if len(made) == 1 else second

    connector = Connector(_settings(mode="relay"), FakeApi(_route()), CLIENT_KEY, host, factory)
    tunnel = await connector.connect()
    assert tunnel.mode == "relay"
    new_url = "ws://198.51.100.30:8081/v1/relay/session"
    await connector.move_ws_relay(tunnel, new_url)
    assert made[-1].relay is not None
    assert made[-1].relay.url == new_url
    assert (made[-1].relay.token, made[-1].relay.channel) == ("hgr_x", 7)  # the same session
    assert second.started
    assert first.closed
    assert tunnel.relay is second
    assert tunnel.route.relay is not None
    assert tunnel.route.relay.url == new_url
    assert host.calls[-1] == ("peer", ("127.0.0.1:40000", ("0.0.0.0/0", "::/0")))
