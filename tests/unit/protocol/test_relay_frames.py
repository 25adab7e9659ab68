"""Relay frame codec: byte-exact vectors, round trips, and input that must be rejected."""

from __future__ import annotations

import random

import pytest

from higgs.protocol.relay import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    MAX_DATAGRAM_SIZE,
    MAX_FRAME_SIZE,
    DropReason,
    FrameError,
    decode,
    encode_batches,
    encode_data,
    validate,
)

VECTORS = [
    # (label, channel, datagrams, wire bytes)
    ("docs/protocol.md §3.1", 17, [b"\x01\x02", b"\xff"], "01 00000011 0002 0102 0001 ff"),
    ("one byte, channel 0", 0, [b"\x00"], "01 00000000 0001 00"),
    ("max channel", 0xFFFFFFFF, [b"\xab\xcd"], "01 ffffffff 0002 abcd"),
    ("256-byte datagram", 258, [bytes(256)], "01 00000102 0100" + "00" * 256),
]


@pytest.mark.parametrize(("label", "channel", "datagrams", "wire"), VECTORS)
def test_vectors_encode_and_decode_byte_exactly(
    label: str, channel: int, datagrams: list[bytes], wire: str
) -> None:
    expected = bytes.fromhex(wire.replace(" ", ""))
    assert encode_data(channel, datagrams) == expected, label
    frame = decode(expected)
    assert frame.channel == channel
    assert [bytes(d) for d in frame.datagrams] == datagrams
    assert validate(expected) == (channel, len(datagrams))


def test_protocol_md_carries_the_same_vector() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "protocol.md").read_text()
    assert "01 00 00 00 11  00 02 01 02  00 01 ff" in text


@pytest.mark.parametrize(
    ("wire", "reason", "words"),
    [
        ("", DropReason.MALFORMED, "shorter than a header"),
        ("01 0000", DropReason.MALFORMED, "shorter than a header"),
        ("01 00000001", DropReason.MALFORMED, "without a record"),
        ("01 00000001 0000", DropReason.MALFORMED, "zero-length"),
        ("01 00000001 00", DropReason.MALFORMED, "truncated record header"),
        ("01 00000001 0003 aabb", DropReason.MALFORMED, "overruns"),
        ("01 00000001 0001 aa 0002 bb", DropReason.MALFORMED, "overruns"),
        ("01 00000001 0001 aa 00", DropReason.MALFORMED, "truncated record header"),
        ("02 00000001 0001 aa", DropReason.UNKNOWN_TYPE, "0x02"),
        ("00 00000001", DropReason.UNKNOWN_TYPE, "0x00"),
    ],
)
def test_broken_frames_are_rejected_with_their_reason(
    wire: str, reason: DropReason, words: str
) -> None:
    raw = bytes.fromhex(wire.replace(" ", ""))
    with pytest.raises(FrameError) as failure:
        validate(raw)
    assert failure.value.reason is reason
    assert words in str(failure.value)
    with pytest.raises(FrameError):
        decode(raw)


def test_oversized_frame_is_rejected() -> None:
    biggest = encode_data(1, [bytes(MAX_DATAGRAM_SIZE)])
    assert len(biggest) == MAX_FRAME_SIZE
    assert validate(biggest) == (1, 1)
    with pytest.raises(FrameError) as failure:
        validate(biggest + b"\x00")
    assert failure.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize(
    ("channel", "datagrams", "problem"),
    [
        (-1, [b"a"], "channel"),
        (1 << 32, [b"a"], "channel"),
        (1, [], "at least one"),
        (1, [b""], "at least 1 byte"),
        (1, [bytes(MAX_DATAGRAM_SIZE + 1)], "exceed"),
    ],
)
def test_encoder_refuses_what_the_parser_would_reject(
    channel: int, datagrams: list[bytes], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        encode_data(channel, datagrams)


def test_batches_respect_record_and_byte_limits_and_keep_order() -> None:
    small = [bytes([i % 256]) * 100 for i in range(200)]
    frames = encode_batches(9, small)
    assert [len(decode(f).datagrams) for f in frames] == [64, 64, 64, 8]
    big = [bytes([i]) * 1420 for i in range(100)]
    frames = encode_batches(9, big)
    assert all(len(f) <= MAX_BATCH_BYTES for f in frames)
    assert all(len(decode(f).datagrams) <= MAX_BATCH_RECORDS for f in frames)
    assert [bytes(d) for f in frames for d in decode(f).datagrams] == big
    assert encode_batches(9, [b"", bytes(MAX_DATAGRAM_SIZE + 1)]) == []


def test_random_round_trips() -> None:
    rng = random.Random(1)
    for _ in range(300):
        channel = rng.randrange(1 << 32)
        datagrams = [rng.randbytes(rng.randint(1, 1500)) for _ in range(rng.randint(1, 30))]
        frame = encode_data(channel, datagrams)
        decoded = decode(frame)
        assert decoded.channel == channel
        assert [bytes(d) for d in decoded.datagrams] == datagrams


def test_fuzzed_junk_never_escapes_as_anything_but_frame_error() -> None:
    rng = random.Random(2)
    valid = encode_data(3, [b"abc", b"defg"])
    reasons: set[DropReason] = set()
    for _ in range(3000):
        choice = rng.random()
        if choice < 0.4:
            junk = rng.randbytes(rng.randint(0, 40))
        elif choice < 0.8:  # flip bytes of a valid frame
            flipped = bytearray(valid)
            for _ in range(rng.randint(1, 3)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            junk = bytes(flipped)
        else:  # truncate or extend a valid frame
            junk = valid[: rng.randrange(len(valid))] + rng.randbytes(rng.randint(0, 3))
        try:
            channel, count = validate(junk)
        except FrameError as exc:
            reasons.add(exc.reason)
        else:
            # Whatever passes must decode into records that exactly fill the frame.
            decoded = decode(junk)
            assert decoded.channel == channel
            assert len(decoded.datagrams) == count
            assert sum(2 + len(d) for d in decoded.datagrams) + 5 == len(junk)
    assert reasons == {DropReason.MALFORMED, DropReason.UNKNOWN_TYPE}
