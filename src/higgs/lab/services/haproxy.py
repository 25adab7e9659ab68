"""HAProxy (Debian ``haproxy``) in front of several bosonserver instances, for the lab and the
scale-out tests: one frontend for the REST API, one for the relay WebSockets, round robin, the
instances health-checked every 500 ms so that a killed one leaves the rotation within about
a second and a refused connection is redispatched to another (docs/scaleout.md).

Only renders the configuration and builds the command line; the caller starts the process in
the namespace it wants (a lab host's ``popen``, or loopback in the integration tests) and stops
it by its PID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Backend", "argv", "render_config", "write_config"]

HAPROXY = "/usr/sbin/haproxy"


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    api: str  # HOST:PORT of its REST API
    relay: str  # HOST:PORT of its relay hub


def render_config(api_bind: str, relay_bind: str, backends: Sequence[Backend]) -> str:
    if not backends:
        raise ValueError("backends: at least one instance")
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        # A check slower than its 500 ms interval is a busy instance, not a dead one (a
        # killed one refuses the connect at once): give it 2 s before counting a failure.
        "    timeout check 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        # A WebSocket, once upgraded, is a tunnel: the node pings it every few seconds.
        "    timeout tunnel 1h",
        "    option redispatch",
        "    retries 2",
        "frontend api",
        f"    bind {api_bind}",
        "    default_backend api",
        "backend api",
        "    balance roundrobin",
        "    option httpchk GET /healthz",
        "    default-server inter 500ms fall 2 rise 1",
        *(f"    server {b.name} {b.api} check" for b in backends),
        "frontend relay",
        f"    bind {relay_bind}",
        "    default_backend relay",
        "backend relay",
        "    balance roundrobin",
        # The hub speaks only WebSocket: a TCP connect is its health check.
        "    default-server inter 500ms fall 2 rise 1",
        *(f"    server {b.name} {b.relay} check" for b in backends),
    ]
    return "\n".join(lines) + "\n"


def write_config(path: Path, api_bind: str, relay_bind: str, backends: Sequence[Backend]) -> Path:
    path.write_text(render_config(api_bind, relay_bind, backends))
    return path


def argv(config: Path) -> list[str]:
    """Foreground (``-db``), so that the caller's PID is HAProxy's."""
    return [HAPROXY, "-db", "-f", str(config)]
