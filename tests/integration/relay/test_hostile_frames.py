"""Hostile frames against the relay's WebSocket endpoints while a real session carries traffic.

The hub runs in its own process (``hub_process``): the attack must not crash it, its RSS must
stay bounded, the victim session keeps carrying datagrams both ways throughout, and every
hostile frame is counted under the reason the protocol names (``higgs_relay_dropped_total``).
``HIGGS_HOSTILE_FRAMES`` sets the number of hostile frames (``make test``: 20,000; ``make
soak``: 1,000,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import struct
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from picows import WSError, WSMsgType
from prometheus_client.parser import text_string_to_metric_families

from higgs.common.secrets import hash_token, new_token
from higgs.protocol.relay import MAX_FRAME_SIZE, encode_data

from .conftest import RawClient, eventually, raw_connect

FRAMES = int(os.environ.get("HIGGS_HOSTILE_FRAMES", "20000"))
ROUND = 1000  # hostile frames between two end-to-end checks of the victim session
TIME_LIMIT_S = max(120.0, FRAMES / 400)  # the bound that keeps a broken run from hanging
RSS_GROWTH_LIMIT_KB = 64 * 1024  # generous: the hub keeps nothing per hostile frame

VICTIM_CHANNEL = 17
ATTACKER_CHANNEL = 18


@dataclass
class HubProcess:
    process: asyncio.subprocess.Process
    port: int
    tokens: dict[str, str]

    def url(self, kind: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/relay/{kind}"

    async def drops(self) -> dict[str, float]:
        return await self._family("higgs_relay_dropped", "reason")

    async def refused(self) -> dict[str, float]:
        """Upgrades refused with 401, as ``{"node/missing": n, ...}``."""
        return await self._family("higgs_relay_upgrades_refused", "link", "reason")

    async def _family(self, name: str, *labels: str) -> dict[str, float]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(b"scrape\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), 10)
        text = json.loads(line)["metrics"]
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == name:
                for sample in family.samples:
                    out["/".join(sample.labels[label] for label in labels)] = sample.value
        return out

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture
async def hub() -> AsyncIterator[HubProcess]:
    tokens = {
        "victim_node": new_token("hgn_"),
        "attacker_node": new_token("hgn_"),
        "victim_session": new_token("hgr_"),
        "attacker_session": new_token("hgr_"),
    }
    spec = {
        "nodes": {
            "n_victim": hash_token(tokens["victim_node"]),
            "n_attacker": hash_token(tokens["attacker_node"]),
        },
        "sessions": [
            ["s_victim", VICTIM_CHANNEL, "n_victim", hash_token(tokens["victim_session"])],
            ["s_attacker", ATTACKER_CHANNEL, "n_victim", hash_token(tokens["attacker_session"])],
        ],
    }
    script = Path(__file__).with_name("hub_process.py")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        json.dumps(spec),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        yield HubProcess(process, int(json.loads(line)["port"]), tokens)
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


# -- the hostile frames, each with the reason the relay must count it under ----------------

Send = Callable[[RawClient], None]


def _binary(payload: bytes) -> Send:
    return lambda c: c.send(payload)


def _text(payload: bytes) -> Send:
    return lambda c: c.send(payload, kind=WSMsgType.TEXT)


def _orphan_continuation(payload: bytes) -> Send:
    return lambda c: c.send(payload, kind=WSMsgType.CONTINUATION)


def _interrupted_fragment(first: bytes, second: bytes) -> Send:
    # A message starts and, before its end, a new one starts: out of order.
    def send(c: RawClient) -> None:
        c.send(first, fin=False)
        c.send(second)

    return send


def _oversized_in_fragments(size: int) -> Send:
    def send(c: RawClient) -> None:
        c.send(b"\x01" * (size // 2), fin=False)
        c.send(b"\x02" * (size - size // 2), kind=WSMsgType.CONTINUATION)

    return send


def _hostile(rng: random.Random, *, node: bool) -> tuple[Send, Counter[str]]:
    """One hostile message and the drops it must add, by reason."""
    pick = rng.randrange(100)
    garbage = rng.randbytes(rng.randrange(1, 64))
    if pick < 15:  # truncated: shorter than a header
        return _binary(rng.randbytes(rng.randrange(1, 5))), Counter(malformed=1)
    if pick < 25:  # a DATA header and no record
        return _binary(struct.pack(">BI", 1, VICTIM_CHANNEL)), Counter(malformed=1)
    if pick < 35:  # the last record overruns the frame
        head = struct.pack(">BIH", 1, VICTIM_CHANNEL, len(garbage) + 5)
        return _binary(head + garbage), Counter(malformed=1)
    if pick < 40:  # a zero-length record
        return _binary(struct.pack(">BIH", 1, VICTIM_CHANNEL, 0) + garbage), Counter(malformed=1)
    if pick < 50:  # an unknown frame type
        head = struct.pack(">BI", rng.randrange(2, 256), VICTIM_CHANNEL)
        return _binary(head + garbage), Counter(unknown_type=1)
    if pick < 65:  # a well-formed frame for a session that is not the sender's
        frame = encode_data(VICTIM_CHANNEL if node else rng.choice([VICTIM_CHANNEL, 99]), [garbage])
        return _binary(frame), Counter(wrong_channel=1)
    if pick < 72:  # text that is not JSON
        return _text(b"\xff\xfe{" + garbage), Counter(malformed=1)
    if pick < 78:  # JSON: a node's without a type is malformed, a client's is not expected
        if node:
            return _text(b'{"no_type": 1}'), Counter(malformed=1)
        return _text(b'{"type": "peer_add", "x": 1}'), Counter(unknown_type=1)
    if pick < 86:  # a continuation of nothing
        return _orphan_continuation(b"\x00" + garbage), Counter(malformed=1)
    if pick < 94:  # a new message in the middle of a fragmented one, both garbage
        # (the second overruns itself: random bytes can form a valid frame once in 2^16)
        second = struct.pack(">BIH", 1, VICTIM_CHANNEL, len(garbage) + 1) + garbage
        return _interrupted_fragment(garbage, second), Counter(malformed=2)
    if pick < 97:  # one frame over the relay's limit
        return _binary(b"\x01" + rng.randbytes(MAX_FRAME_SIZE)), Counter(malformed=1)
    return _oversized_in_fragments(MAX_FRAME_SIZE + 100), Counter(malformed=1)


async def _drain(client: RawClient) -> None:
    assert client.transport is not None
    raw = client.transport.underlying_transport
    while raw.get_write_buffer_size() > 256 * 1024:  # noqa: ASYNC110 - no drain event in picows
        await asyncio.sleep(0.001)


async def _round_trip(node: RawClient, session: RawClient, seq: int) -> None:
    """One datagram client → node and one back, through the hub, each arriving intact."""
    up = f"up-{seq}".encode()
    down = f"down-{seq}".encode()
    session.send(encode_data(VICTIM_CHANNEL, [up]))
    await eventually(lambda: encode_data(VICTIM_CHANNEL, [up]) in node.binary, 10)
    node.send(encode_data(VICTIM_CHANNEL, [down]))
    await eventually(lambda: encode_data(VICTIM_CHANNEL, [down]) in session.binary, 10)
    node.binary.clear()
    session.binary.clear()


async def _unauthenticated(hub: HubProcess, rng: random.Random, count: int) -> Counter[str]:
    """Upgrades with no, a wrong or a mistyped credential, and raw bytes that are no HTTP;
    returns the refusals the hub must count (``higgs_relay_upgrades_refused_total``)."""
    refused: Counter[str] = Counter()
    for i in range(count):
        kind = rng.choice(["node", "session"])
        token = [None, new_token("hgn_"), new_token("hgr_"), "x" * 300][i % 4]
        with pytest.raises(WSError):
            await raw_connect(hub.url(kind), token)
        refused[f"{kind}/{'missing' if token is None else 'unknown'}"] += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        writer.write(rng.randbytes(rng.randrange(1, 2048)) + b"\r\n\r\n")
        await writer.drain()
        with contextlib.suppress(TimeoutError):  # the hub may wait for the rest of a request
            await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
    return refused


@pytest.mark.skipif(FRAMES < 1, reason="HIGGS_HOSTILE_FRAMES=0")
async def test_relay_counts_every_hostile_frame_and_keeps_the_session(hub: HubProcess) -> None:
    rng = random.Random(17)
    node = await raw_connect(hub.url("node"), hub.tokens["victim_node"])
    session = await raw_connect(hub.url("session"), hub.tokens["victim_session"])
    attacker_session = await raw_connect(hub.url("session"), hub.tokens["attacker_session"])
    attacker_node = await raw_connect(hub.url("node"), hub.tokens["attacker_node"])
    clients = [node, session, attacker_session, attacker_node]
    try:
        await eventually(lambda: all(c.text for c in clients), 10)  # every link got its hello
        for c in clients:
            c.text.clear()
        await _round_trip(node, session, 0)
        before = await hub.drops()
        refused_before = await hub.refused()
        rss_before = hub.rss_kb()
        expected: Counter[str] = Counter()
        refusals: Counter[str] = Counter()
        async with asyncio.timeout(TIME_LIMIT_S):
            sent = 0
            seq = 0
            while sent < FRAMES:
                for _ in range(min(ROUND, FRAMES - sent)):
                    as_node = rng.random() < 0.5
                    send, drops = _hostile(rng, node=as_node)
                    send(attacker_node if as_node else attacker_session)
                    expected += drops
                    sent += 1
                    if sent % 200 == 0:
                        await _drain(attacker_node)
                        await _drain(attacker_session)
                seq += 1
                await _round_trip(node, session, seq)  # the victim still works, both ways
                if seq % 10 == 0:
                    refusals += await _unauthenticated(hub, rng, 2)
            refusals += await _unauthenticated(hub, rng, 8)
            await _round_trip(node, session, seq + 1)

            def delta(now: dict[str, float]) -> Counter[str]:
                return Counter(
                    {k: int(v - before.get(k, 0)) for k, v in now.items() if v != before.get(k)}
                )

            # The hub has read all it was sent once the last round trip came back; the
            # scrape below still polls, as a scrape and the data path run on two threads.
            last: dict[str, float] = {}

            async def counted() -> bool:
                nonlocal last
                last = await hub.drops()
                return delta(last) == expected

            for _ in range(100):
                if await counted():
                    break
                await asyncio.sleep(0.1)
        assert delta(last) == expected
        refused = await hub.refused()
        assert {k: int(v - refused_before.get(k, 0)) for k, v in refused.items() if v} == refusals
        assert hub.process.returncode is None, "the hub crashed"
        # A hostile frame is dropped, not a reason to drop the link it came on.
        assert not attacker_session.closed.is_set()
        assert not attacker_node.closed.is_set()
        growth = hub.rss_kb() - rss_before
        assert growth < RSS_GROWTH_LIMIT_KB, f"hub RSS grew by {growth} KiB"
        assert not node.closed.is_set()
        assert not session.closed.is_set()
    finally:
        for c in clients:
            if c.transport is not None and not c.closed.is_set():
                c.transport.send_close()
                c.transport.disconnect()
