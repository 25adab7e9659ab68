"""Two wireguard-go interfaces through osnet, one in each of two namespaces: the setup shared by
the WireGuard pair test and the UDP relay test (they differ only in the peers they set)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from higgs.common.keys import PrivateKey
from higgs.osnet.journal import Journal
from higgs.osnet.wireguard import WireGuard

__all__ = ["WgEnd", "WgEndSpec", "wireguard_go_pair"]

LISTEN_PORT = 51820
MTU = 1420


@dataclass(frozen=True)
class WgEndSpec:
    """One end: its namespace, interface name, key and tunnel address (``10.99.0.1/24``)."""

    ns: str
    ifname: str
    key: PrivateKey
    address: str


@dataclass(frozen=True)
class WgEnd:
    spec: WgEndSpec
    wg: WireGuard
    journal: Journal


@contextlib.contextmanager
def wireguard_go_pair(
    journal_dir: Path, a: WgEndSpec, b: WgEndSpec
) -> Iterator[tuple[WgEnd, WgEnd]]:
    """Both interfaces created, keyed, listening on 51820, addressed and up (no peers yet),
    each with its own journal under ``journal_dir``; whatever is still journaled at the end
    is undone, also when the test failed."""
    with contextlib.ExitStack() as stack:
        ends = []
        for spec in (a, b):
            journal = stack.enter_context(Journal(journal_dir / spec.ifname / "journal.json"))
            stack.callback(journal.undo_all)
            wg = WireGuard(spec.ifname, journal=journal, netns=spec.ns)
            wg.create()
            wg.configure(spec.key, listen_port=LISTEN_PORT)
            wg.set_addresses([spec.address])
            wg.up(mtu=MTU)
            ends.append(WgEnd(spec, wg, journal))
        yield ends[0], ends[1]
