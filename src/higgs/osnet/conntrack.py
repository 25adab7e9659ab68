"""The ``conntrack`` tool (conntrack-tools), run through a :class:`~higgs.osnet.runner.Runner`:
deleting entries by filter and listing the original tuples of entries.

Shared by the UDP relay's kernel path (:mod:`higgs.osnet.relaynat`), which deletes a flow's
entries when its NAT changes, and the node's firewall (:mod:`higgs.osnet.firewall.flows`),
which deletes established flows to destinations a new block list forbids.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from higgs.osnet.errors import CommandError, OsnetError
from higgs.osnet.runner import Runner

__all__ = ["available", "delete", "original_pairs"]

# The first src=/dst= of a listing line is the original direction's tuple.
_ORIG = re.compile(r"\bsrc=(\S+) dst=(\S+)")


def available(runner: Runner) -> bool:
    """Whether the ``conntrack`` tool runs here (in the runner's namespace); never raises."""
    try:
        return runner.run(["conntrack", "--version"], check=False, timeout=10).ok
    except (CommandError, OSError):
        return False


def delete(runner: Runner, args: Sequence[str]) -> int:
    """Runs ``conntrack -D ARGS``; returns how many entries went ("0 deleted" exits 1)."""
    result = runner.run(["conntrack", "-D", *args], check=False, timeout=10)
    found = re.search(r"(\d+) flow entries have been deleted", result.stderr + result.stdout)
    if found:
        return int(found.group(1))
    if not result.ok:
        raise OsnetError(f"conntrack -D {' '.join(args)} failed: {result.stderr.strip()}")
    return 0


def original_pairs(
    runner: Runner, source: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]]:
    """(source, destination) of the original direction of every entry whose original source
    is in ``source``."""
    family = "ipv4" if source.version == 4 else "ipv6"
    argv = ["conntrack", "-L", "-f", family, "-s", str(source)]
    result = runner.run(argv, check=False, timeout=10)
    if not result.ok:
        raise OsnetError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    pairs: set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]] = set()
    for line in result.stdout.splitlines():
        m = _ORIG.search(line)
        if m is None:
            continue
        try:
            pairs.add((ipaddress.ip_address(m[1]), ipaddress.ip_address(m[2])))
        except ValueError:
            continue  # not an address: not a line we understand
    return pairs
