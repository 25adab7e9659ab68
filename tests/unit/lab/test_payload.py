"""The download payload of the lab's HTTP server: exact size, reproducible, incompressible."""

from __future__ import annotations

import hashlib
import zlib

from higgs.lab.services.whoami import payload_chunks, payload_sha256


def test_payload_has_exactly_the_asked_size() -> None:
    for size in (0, 1, 65535, 65536, 65537, 200_000):
        assert sum(len(c) for c in payload_chunks(size)) == size


def test_payload_is_reproducible_and_its_digest_matches() -> None:
    data = b"".join(payload_chunks(100_000))
    assert data == b"".join(payload_chunks(100_000))
    assert payload_sha256(100_000) == hashlib.sha256(data).hexdigest()
    assert payload_sha256(100_000) != payload_sha256(100_001)


def test_payload_does_not_compress() -> None:
    data = b"".join(payload_chunks(1 << 16))
    assert len(zlib.compress(data)) > len(data) * 0.99
