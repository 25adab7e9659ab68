"""The UDP relay alone (``bosonserver relay``, or ``python -m higgs.relay``).

Sessions come from the shared database (``--data-dir``/``--database``, the same options as
every ``bosonserver`` command) or, without one, from a JSON file (``--sessions-file``).
Stops on SIGTERM/SIGINT, undoing every host change it made.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from higgs.common.cli import new_parser, run_cli
from higgs.common.errors import HiggsError
from higgs.common.relay_ports import PortRange
from higgs.relay.metrics import serve_metrics
from higgs.relay.runner import Reconciler
from higgs.relay.service import RelaySettings, UdpRelay
from higgs.relay.sessions_file import read_sessions

__all__ = ["add_relay_options", "build_parser", "main", "run_relay", "settings_from"]


class RelayConfigError(HiggsError):
    pass


def add_relay_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--relay-ip", help="this host's IPv4 or IPv6 address both legs reach (required)")
    p.add_argument("--relay-ports", help="FIRST-LAST (default 40000-49999)")
    p.add_argument(
        "--relay-state-dir",
        type=Path,
        help="journal directory (default /var/lib/bosonserver/relay)",
    )
    p.add_argument("--relay-instance", default="", help="instance name (own nft table)")
    p.add_argument(
        "--userspace", action="store_true", help="no kernel forwarding: carry every packet here"
    )
    p.add_argument("--relay-metrics-listen", help="HOST:PORT for the relay's /metrics")
    p.add_argument(
        "--relay-probe-port",
        type=int,
        help="UDP port of the RTT probe (docs/protocol.md §5.5; default 39999, 0: any free one)",
    )
    p.add_argument(
        "--relay-ws-url",
        help="public base URL (ws[s]://host:port) of this host's WebSocket relay hub",
    )
    p.add_argument(
        "--relay-ws-listen",
        help="HOST:PORT of this host's WebSocket relay hub (needs --relay-ws-url)",
    )
    p.add_argument("--relay-ws-tls-cert", type=Path, help="TLS certificate of the hub (wss://)")
    p.add_argument("--relay-ws-tls-key", type=Path, help="TLS key of the hub")


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("higgs-relay", "the Higgs.net UDP relay")
    add_relay_options(parser)
    parser.add_argument("--sessions-file", type=Path, help="JSON list of sessions (no database)")
    return parser


def settings_from(args: argparse.Namespace, default_state: Path) -> RelaySettings:
    if not args.relay_ip:
        raise RelayConfigError("relay_ip: give --relay-ip (an address of this host)")
    try:
        relay_ip = str(ipaddress.ip_address(args.relay_ip))
    except ValueError as exc:
        raise RelayConfigError(f"relay_ip: {exc}") from exc
    try:
        ports = PortRange.parse(args.relay_ports or "40000-49999")
    except ValueError as exc:
        raise RelayConfigError(f"relay_ports: {exc}") from exc
    return RelaySettings(
        relay_ip=relay_ip,
        state_dir=args.relay_state_dir or default_state,
        ports=ports,
        instance=args.relay_instance,
        kernel=not args.userspace,
    )


def run_relay(relay: UdpRelay, reconciler: Reconciler, metrics_listen: str | None = None) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    relay.start()
    stop_metrics = serve_metrics(relay.collector, metrics_listen) if metrics_listen else None
    try:
        reconciler.run(stop)
    finally:
        if stop_metrics is not None:
            stop_metrics()
        relay.stop()
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.sessions_file is None:
        raise RelayConfigError("sessions_file: give --sessions-file (or use `bosonserver relay`)")
    settings = settings_from(args, Path("/var/lib/bosonserver/relay"))
    relay = UdpRelay(settings)
    path: Path = args.sessions_file
    source = Reconciler(relay, lambda: read_sessions(path) if path.exists() else [])
    return run_relay(relay, source, args.relay_metrics_listen)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _dispatch, argv)
