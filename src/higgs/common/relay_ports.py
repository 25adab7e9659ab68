"""Which UDP relay port a new session gets (pure; the server's store runs it inside the
session-opening transaction, the relay checks its range with it).

A port is *busy* while a session holds it and for ``cooldown_s`` after its release: a
conntrack entry of the old flow (UDP: 30 s unreplied, 120 s "stream" by default) could still
match a packet of the old peers and carry it into the new session, so the cooldown must be at
least the host's ``nf_conntrack_udp_timeout_stream``. The relay also deletes a closed
session's entries at once; the cooldown covers a relay that was down when the lease ended.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["DEFAULT_COOLDOWN_S", "DEFAULT_RANGE", "PortRange", "pick_port"]

DEFAULT_RANGE = (40000, 49999)
DEFAULT_COOLDOWN_S = 180.0  # > 120 s, the default UDP conntrack "stream" timeout


@dataclass(frozen=True, slots=True)
class PortRange:
    first: int
    last: int

    def __post_init__(self) -> None:
        if not 1024 <= self.first <= self.last <= 65535:
            raise ValueError(
                f"relay port range {self.first}-{self.last}: need 1024 <= first <= last <= 65535"
            )

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``"40000-49999"`` (what the settings and the CLI take)."""
        first, sep, last = text.partition("-")
        try:
            return cls(int(first), int(last if sep else first))
        except ValueError as exc:
            raise ValueError(f"relay port range {text!r}: expected FIRST-LAST ({exc})") from exc

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last


def pick_port(ports: PortRange, busy: Collection[int], after: int | None = None) -> int | None:
    """The first port of the range not in ``busy``, searching upward from ``after + 1`` and
    wrapping (so released ports are reused last); None when every port is busy."""
    start = ports.first if after is None or after not in ports else after + 1
    size = len(ports)
    for step in range(size):
        port = ports.first + (start - ports.first + step) % size
        if port not in busy:
            return port
    return None
