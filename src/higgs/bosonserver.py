"""The ``bosonserver`` program: the composition root of the API server and the UDP relay.

``higgs.server`` never changes its host and never imports the relay; this module, outside
both, starts the relay beside the server in ``serve`` (when ``udp_relay_address`` is set and
``udp_relay_embedded``, the default) and runs it alone in ``bosonserver relay`` (another host,
the shared database). Every other command is the server's own CLI.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from higgs.common.cli import new_parser, run_cli
from higgs.common.errors import HiggsError
from higgs.server import cli as server_cli

if TYPE_CHECKING:  # the relay's modules load only for `serve` with a relay and `relay`
    from higgs.relay.db_source import DbSource
    from higgs.relay.runner import Reconciler
    from higgs.relay.service import UdpRelay

__all__ = ["main"]

log = logging.getLogger(__name__)


class _RelayError(HiggsError):
    pass


def _relay_parser() -> argparse.ArgumentParser:
    from higgs.relay.cli import add_relay_options

    parser = new_parser("bosonserver relay", "run the UDP relay alone (shared database)")
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("--data-dir", type=Path, help="server state directory")
    parser.add_argument("--database", help="postgresql://… (default: SQLite in the data dir)")
    add_relay_options(parser)
    return parser


def _relay_pieces(
    db_url: str, relay_ip: str, ports: str, state_dir: Path, userspace: bool, instance: str
) -> tuple[UdpRelay, DbSource, Reconciler]:
    from higgs.common.relay_ports import PortRange
    from higgs.relay.db_source import DbSource
    from higgs.relay.runner import Reconciler
    from higgs.relay.service import RelaySettings, UdpRelay

    try:
        port_range = PortRange.parse(ports)
    except ValueError as exc:
        raise _RelayError(f"udp_relay_ports: {exc}") from exc
    try:
        relay_ip = str(ipaddress.ip_address(relay_ip))  # the server's spelling of the leases
    except ValueError as exc:
        raise _RelayError(f"udp_relay_address: {exc}") from exc
    relay = UdpRelay(
        RelaySettings(relay_ip, state_dir, port_range, instance=instance, kernel=not userspace)
    )
    source = DbSource(db_url, relay_ip)
    return relay, source, Reconciler(relay, source, on_legs=source.record)


def _relay_alone(args: argparse.Namespace) -> int:
    from higgs.relay.cli import run_relay
    from higgs.server.store.db import database_url

    settings = server_cli.settings_from_args(args)
    relay_ip = args.relay_ip or settings.udp_relay_address
    if not relay_ip:
        raise _RelayError("udp_relay_address: give --relay-ip or set udp_relay_address")
    relay, source, reconciler = _relay_pieces(
        database_url(settings.database, settings.data_dir),
        relay_ip,
        args.relay_ports or settings.udp_relay_ports,
        args.relay_state_dir or settings.data_dir / "relay",
        args.userspace or settings.udp_relay_userspace,
        args.relay_instance,
    )
    try:
        return run_relay(
            relay, reconciler, args.relay_metrics_listen or settings.udp_relay_metrics_listen
        )
    finally:
        source.close()


def _serve_with_relay(argv: list[str]) -> int:
    """``serve``: the relay in threads of this process, the server on the main thread."""
    args = server_cli.build_parser().parse_args(argv)
    settings = server_cli.settings_from_args(args)
    if settings.udp_relay_address is None or not settings.udp_relay_embedded:
        return server_cli.main(argv)
    from higgs.server.store.db import database_url

    relay, source, reconciler = _relay_pieces(
        database_url(settings.database, settings.data_dir),
        settings.udp_relay_address,
        settings.udp_relay_ports,
        settings.data_dir / "relay",
        settings.udp_relay_userspace,
        "",
    )
    from higgs.relay.metrics import serve_metrics

    stop = threading.Event()
    relay.start()
    listen = settings.udp_relay_metrics_listen
    stop_metrics = serve_metrics(relay.collector, listen) if listen else None
    thread = threading.Thread(target=reconciler.run, args=(stop,), name="udp-relay-sync")
    thread.start()
    try:
        # The relay's counters join the server's /metrics and the dashboard's relay page.
        return server_cli.main(argv, collectors=[relay.collector])
    finally:
        stop.set()
        thread.join(timeout=30)
        if stop_metrics is not None:
            stop_metrics()
        relay.stop()
        source.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["relay"]:
        return run_cli(_relay_parser(), _relay_alone, args[1:])
    if args[:1] == ["serve"]:
        try:
            return _serve_with_relay(args)
        except HiggsError as exc:
            print(f"bosonserver: error: {exc}", file=sys.stderr)
            return 1
    return server_cli.main(args)


if __name__ == "__main__":
    raise SystemExit(main())
