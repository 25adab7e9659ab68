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
from higgs.protocol.relay_probe import DEFAULT_PROBE_PORT
from higgs.server import cli as server_cli

if TYPE_CHECKING:  # the relay's modules load only for `serve` with a relay and `relay`
    from higgs.relay.db_source import DbSource, HostInfo
    from higgs.relay.probe import ProbeResponder
    from higgs.relay.runner import Reconciler

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


class _RelayPieces:
    """One relay host: the relay, its session source, its loop, its RTT probe, its beat."""

    def __init__(
        self,
        db_url: str,
        relay_ip: str,
        ports: str,
        state_dir: Path,
        userspace: bool,
        instance: str,
        *,
        probe_port: int,
        ws_url: str | None,
    ) -> None:
        from higgs.common.relay_ports import PortRange
        from higgs.relay.db_source import DbSource, HostInfo
        from higgs.relay.probe import ProbeResponder
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
        if not 0 <= probe_port <= 65535 or probe_port in port_range:
            raise _RelayError(f"relay_probe_port: {probe_port} must be outside {ports}")
        self.relay = UdpRelay(
            RelaySettings(relay_ip, state_dir, port_range, instance=instance, kernel=not userspace)
        )
        self.source: DbSource = DbSource(db_url, relay_ip)
        self.probe: ProbeResponder = ProbeResponder(relay_ip, probe_port, self.relay.stats)
        self.info: HostInfo = HostInfo(f"{port_range.first}-{port_range.last}", 0, ws_url)
        self.reconciler: Reconciler = Reconciler(
            self.relay, self.source, on_legs=self.source.record, on_beat=self._beat
        )

    def start_probe(self) -> None:
        from higgs.relay.db_source import HostInfo

        try:
            self.probe.start()
        except OSError as exc:  # routes still work: this host is then ranked as unmeasured
            log.warning("relay RTT probe not started on port %d: %s", self.probe.port, exc)
            return
        self.info = HostInfo(self.info.ports, self.probe.port, self.info.ws_url)

    def _beat(self, stats: dict[str, object]) -> None:
        self.source.beat(self.info, stats | {"probes_answered": self.probe.answered})

    def close(self) -> None:
        from higgs.relay.runner import host_stats

        self.probe.stop()
        try:
            self.source.goodbye(self.info, host_stats(self.relay))
        except Exception as exc:
            log.warning("relay host: could not say goodbye: %s", exc)
        self.source.close()


def _relay_alone(args: argparse.Namespace) -> int:
    from higgs.relay.cli import run_relay
    from higgs.server.store.db import database_url

    settings = server_cli.settings_from_args(args)
    relay_ip = args.relay_ip or settings.udp_relay_address
    if not relay_ip:
        raise _RelayError("udp_relay_address: give --relay-ip or set udp_relay_address")
    pieces = _RelayPieces(
        database_url(settings.database, settings.data_dir),
        relay_ip,
        args.relay_ports or settings.udp_relay_ports,
        args.relay_state_dir or settings.data_dir / "relay",
        args.userspace or settings.udp_relay_userspace,
        args.relay_instance,
        probe_port=DEFAULT_PROBE_PORT if args.relay_probe_port is None else args.relay_probe_port,
        ws_url=args.relay_ws_url,
    )
    pieces.start_probe()
    try:
        return run_relay(
            pieces.relay,
            pieces.reconciler,
            args.relay_metrics_listen or settings.udp_relay_metrics_listen,
        )
    finally:
        pieces.close()


def _serve_with_relay(argv: list[str]) -> int:
    """``serve``: the relay in threads of this process, the server on the main thread."""
    args = server_cli.build_parser().parse_args(argv)
    settings = server_cli.settings_from_args(args)
    if settings.udp_relay_address is None or not settings.udp_relay_embedded:
        return server_cli.main(argv)
    from higgs.server.store.db import database_url

    pieces = _RelayPieces(
        database_url(settings.database, settings.data_dir),
        settings.udp_relay_address,
        settings.udp_relay_ports,
        settings.data_dir / "relay",
        settings.udp_relay_userspace,
        "",
        # Any free port: several servers of a test run share one address.
        probe_port=settings.udp_relay_probe_port,
        ws_url=settings.relay_url,
    )
    relay, reconciler = pieces.relay, pieces.reconciler
    from higgs.relay.metrics import serve_metrics

    stop = threading.Event()
    relay.start()
    pieces.start_probe()
    listen = settings.udp_relay_metrics_listen
    stop_metrics = serve_metrics(relay.collector, listen) if listen else None
    thread = threading.Thread(target=reconciler.run, args=(stop,), name="udp-relay-sync")
    thread.start()
    try:
        # The relay's counters join the server's /metrics and the dashboard's relay page.
        return server_cli.main(argv, collectors=[relay.collector], on_leased=reconciler.kick)
    finally:
        stop.set()
        reconciler.kick()  # not a second later
        thread.join(timeout=30)
        if stop_metrics is not None:
            stop_metrics()
        relay.stop()
        pieces.close()


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
