"""The relay's forwarder with a starting address for the client leg (issue 18: a direct device
moving onto a relay lease), on loopback sockets: the starting address reaches the Binding
through the SessionSpec, the node's initiation comes out of the session's port toward the app,
a forged response from elsewhere binds nothing, the app's answer does, then data flows."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from higgs.relay.db_source import _addr
from higgs.relay.forwarder import Forwarder, SessionSpec
from higgs.relay.metrics import RelayStats
from tests.unit.relay import vectors

N_IDX, A_IDX = 0x22222222, 0x11111111


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(3.0)
    return s


@pytest.fixture
def socks() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    made = (_udp(), _udp(), _udp())
    yield made
    for s in made:
        s.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_node_reaches_the_app_at_its_starting_address(
    socks: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    node, app, attacker = socks
    port = _free_port()
    start = app.getsockname()
    spec = SessionSpec("s_roam", port, vectors.CLIENT_PUB, vectors.NODE_PUB, start=start)
    stats = RelayStats()
    forwarder = Forwarder("127.0.0.1", stats)
    forwarder.start()
    relay = ("127.0.0.1", port)
    try:
        forwarder.add(spec)
        initiation = vectors.initiation(N_IDX, vectors.CLIENT_PUB)
        node.sendto(initiation, relay)
        got, source = app.recvfrom(2048)
        assert (got, source) == (initiation, relay)  # from relay_ip:port: the app roams there
        forged = vectors.response(A_IDX, N_IDX, vectors.NODE_PUB)
        attacker.sendto(forged, relay)
        app.sendto(forged, relay)  # the app's own answer (the same bytes, from the start)
        got, _ = node.recvfrom(2048)
        assert got == forged
        assert forwarder.legs()[port] == (start, node.getsockname())
        assert stats.drops.get("unconfirmed") == 1  # the attacker's copy
        keepalive = vectors.data(A_IDX)
        node.sendto(keepalive, relay)
        assert app.recvfrom(2048)[0] == keepalive
        app.sendto(vectors.data(N_IDX), relay)
        assert node.recvfrom(2048)[0] == vectors.data(N_IDX)
    finally:
        forwarder.stop()


def test_recorded_addresses_parse_back_including_ipv6() -> None:
    assert _addr("198.51.100.30:41641") == ("198.51.100.30", 41641)
    assert _addr("[2001:db8::30]:41641") == ("2001:db8::30", 41641)
    assert _addr(None) is None
    assert _addr("nonsense") is None
    assert _addr("198.51.100.30:0") is None
