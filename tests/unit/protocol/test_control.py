"""Control messages: known types validate, unknown types pass through, junk is a typed error."""

from __future__ import annotations

import base64
import json
import time

import pytest

from higgs.protocol import control
from higgs.protocol.control import (
    ControlError,
    Hello,
    PeerAdd,
    PeerRemove,
    PeerStats,
    SessionClosed,
    Sync,
    UnknownMessage,
    dump,
    parse,
)

KEY = base64.b64encode(bytes(range(32))).decode()
PEER = {"session_id": "s_1", "channel": 17, "public_key": KEY, "address": "10.77.0.5/32"}


def test_each_known_message_parses_into_its_model() -> None:
    hello = parse('{"type":"hello","version":1,"node_id":"n_1","heartbeat_interval_s":15}')
    assert isinstance(hello, Hello)
    assert (hello.version, hello.node_id, hello.heartbeat_interval_s) == (1, "n_1", 15)
    add = parse(json.dumps({"type": "peer_add", **PEER, "relayed": True}))
    assert isinstance(add, PeerAdd)
    assert (add.channel, add.relayed) == (17, True)
    sync = parse(json.dumps({"type": "sync", "peers": [PEER]}))
    assert isinstance(sync, Sync)
    assert sync.peers[0].address == "10.77.0.5/32"
    remove = parse(json.dumps({"type": "peer_remove", **PEER, "reason": "closed"}))
    assert isinstance(remove, PeerRemove)
    stats = parse(
        json.dumps(
            {
                "type": "peer_stats",
                "peers": [{"public_key": KEY, "rx_bytes": 1, "tx_bytes": 2, "last_handshake_s": 3}],
            }
        )
    )
    assert isinstance(stats, PeerStats)
    assert stats.peers[0].tx_bytes == 2
    closed = parse('{"type":"session_closed","reason":"expired"}')
    assert isinstance(closed, SessionClosed)


def test_unknown_types_and_fields_are_tolerated() -> None:
    message = parse('{"type":"future_thing","x":1}')
    assert isinstance(message, UnknownMessage)
    assert message.raw == {"type": "future_thing", "x": 1}
    hello = parse('{"type":"hello","version":1,"new_field":true}')
    assert isinstance(hello, Hello)


def test_round_trip_through_dump() -> None:
    add = PeerAdd(**PEER)
    assert parse(dump(add)) == add


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"x": 1}', '"type"'),
        ('{"type": 5}', '"type"'),
        ('{"type":"hello"}', "version"),
        (json.dumps({"type": "peer_add", **PEER, "channel": -1}), "channel"),
        (json.dumps({"type": "peer_add", **PEER, "public_key": "short"}), "public_key"),
        (json.dumps({"type": "peer_add", **PEER, "address": "banana"}), "address"),
        (json.dumps({"type": "peer_stats", "peers": [{"public_key": KEY}]}), "rx_bytes"),
        ("x" * (2 << 20), "larger than"),
    ],
)
def test_bad_messages_raise_control_error_naming_the_problem(text: str | bytes, words: str) -> None:
    with pytest.raises(ControlError, match=words):
        parse(text)


def test_punch_parses_and_rejects_a_bad_endpoint_or_nonce() -> None:
    key = "yftnihtnyVAk9rl7bJB0W2pdCW2oWrK+U058k+n17wY="
    good = {
        "type": "punch",
        "session_id": "s_1",
        "public_key": key,
        "peer_endpoint": "203.0.113.20:51820",
        "nonce": "00" * 16,
        "at": 1796178600.25,
        "window_s": 4.0,
    }
    msg = control.parse_obj(good)
    assert isinstance(msg, control.Punch)
    assert not msg.steer
    assert control.parse(control.dump(msg)) == msg
    with pytest.raises(control.ControlError, match="peer_endpoint"):
        control.parse_obj({**good, "peer_endpoint": "example.com:1"})
    with pytest.raises(control.ControlError, match="nonce"):
        control.parse_obj({**good, "nonce": "xyz"})
    with pytest.raises(control.ControlError, match="window_s"):
        control.parse_obj({**good, "window_s": 0})


def test_punch_start_is_a_delay_whatever_the_node_clock_says() -> None:
    """A node 5 minutes slow or fast starts when the server meant, not 5 minutes late (or
    at once): the start travels as ``in_s``; ``at`` only for a server that does not send it."""
    key = "yftnihtnyVAk9rl7bJB0W2pdCW2oWrK+U058k+n17wY="
    base = {
        "type": "punch",
        "session_id": "s_1",
        "public_key": key,
        "peer_endpoint": "203.0.113.20:51820",
        "nonce": "00" * 16,
        "window_s": 4.0,
    }
    far = time.time() + 300  # the server's clock 5 minutes ahead of ours
    msg = control.parse_obj({**base, "at": far, "in_s": 1.0})
    assert isinstance(msg, control.Punch)
    assert msg.delay_s() == 1.0
    old = control.parse_obj({**base, "at": time.time() + 1.0})
    assert isinstance(old, control.Punch)
    assert 0.5 < old.delay_s() <= 1.0
    with pytest.raises(control.ControlError, match="in_s"):
        control.parse_obj({**base, "at": far, "in_s": -1})
