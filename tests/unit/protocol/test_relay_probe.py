"""The relay RTT probe datagram (docs/protocol.md §5.5)."""

from __future__ import annotations

import pytest

from higgs.protocol.relay_probe import PROBE_SIZE, answer_to, ping, pong_nonce


def test_a_ping_is_answered_by_a_pong_with_its_nonce_and_the_same_size() -> None:
    request = ping(b"12345678")
    answer = answer_to(request)
    assert answer is not None
    assert len(answer) == len(request) == PROBE_SIZE
    assert pong_nonce(answer) == b"12345678"


@pytest.mark.parametrize(
    "datagram",
    [b"", b"HGRP", ping(b"12345678") + b"x", b"XXXX\x0112345678", b"HGRP\x0212345678"],
)
def test_anything_but_a_ping_gets_no_answer(datagram: bytes) -> None:
    assert answer_to(datagram) is None


def test_a_ping_is_not_taken_for_an_answer() -> None:
    assert pong_nonce(ping(b"abcdefgh")) is None


def test_a_nonce_is_eight_bytes() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        ping(b"short")
