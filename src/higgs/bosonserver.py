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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from higgs.common.cli import new_parser, run_cli
from higgs.common.errors import HiggsError
from higgs.protocol.relay_probe import DEFAULT_PROBE_PORT
from higgs.server import cli as server_cli

if TYPE_CHECKING:  # the relay's modules load only for `serve` with a relay and `relay`
    from higgs.relay.db_source import DbSource, HostInfo
    from higgs.relay.lease_listener import LeaseListener
    from higgs.relay.probe import ProbeResponder
    from higgs.relay.runner import Reconciler
    from higgs.server.relay.host_hub import RelayHostHub

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
    """One relay host: the relay, its session source, its loop, its RTT probe, its beat, and
    on PostgreSQL the listener that has it read its sessions the moment a lease commits."""

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
        from higgs.relay.lease_listener import LeaseListener, libpq_dsn
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
        # More of the host's counters in each beat (its WebSocket hub's, when it serves one).
        self.extra_stats: Callable[[], dict[str, Any]] | None = None
        dsn = libpq_dsn(db_url)
        self.listener: LeaseListener | None = (
            None if dsn is None else LeaseListener(dsn, relay_ip, self.reconciler.kick)
        )

    def start_listener(self) -> None:
        if self.listener is not None:
            self.listener.start()

    def start_probe(self) -> None:
        from higgs.relay.db_source import HostInfo

        try:
            self.probe.start()
        except OSError as exc:  # routes still work: this host is then ranked as unmeasured
            log.warning("relay RTT probe not started on port %d: %s", self.probe.port, exc)
            return
        self.info = HostInfo(self.info.ports, self.probe.port, self.info.ws_url)

    def _beat(self, stats: dict[str, object]) -> None:
        extra = self.extra_stats() if self.extra_stats is not None else {}
        self.source.beat(self.info, stats | extra | {"probes_answered": self.probe.answered})

    def close(self) -> None:
        from higgs.relay.runner import host_stats

        self.probe.stop()
        if self.listener is not None:
            self.listener.stop()
        try:
            self.source.goodbye(self.info, host_stats(self.relay))
        except Exception as exc:
            log.warning("relay host: could not say goodbye: %s", exc)
        self.source.close()


def _ws_hub(
    args: argparse.Namespace, settings: Any, db_url: str, relay_ip: str
) -> RelayHostHub | None:
    """The host's WebSocket relay hub, when ``--relay-ws-listen`` asks for one."""
    if args.relay_ws_listen is None:
        if args.relay_ws_url:
            raise _RelayError("relay_ws_url: give --relay-ws-listen too (the hub it names)")
        return None
    from higgs.server.app import server_ssl_context
    from higgs.server.config import split_listen
    from higgs.server.relay.host_hub import RelayHostHub

    if not args.relay_ws_url or not args.relay_ws_url.startswith(("ws://", "wss://")):
        raise _RelayError("relay_ws_url: give the hub's public ws[s]://host:port")
    try:
        listen = split_listen(args.relay_ws_listen)
    except ValueError as exc:
        raise _RelayError(f"relay_ws_listen: {exc}") from exc
    cert, key = args.relay_ws_tls_cert, args.relay_ws_tls_key
    if (cert is None) != (key is None):
        raise _RelayError("relay_ws_tls_cert and relay_ws_tls_key must be given together")
    try:
        address = str(ipaddress.ip_address(relay_ip))  # the leases' spelling
    except ValueError as exc:
        raise _RelayError(f"udp_relay_address: {exc}") from exc
    return RelayHostHub(
        db_url,
        address,
        listen,
        ssl_context=server_ssl_context(cert, key) if cert and key else None,
        ping_interval_s=settings.relay_ping_interval_s,
        dead_after_s=settings.relay_dead_after_s,
    )


def _relay_alone(args: argparse.Namespace) -> int:
    from higgs.relay.cli import run_relay
    from higgs.server.store.db import database_url

    settings = server_cli.settings_from_args(args)
    relay_ip = args.relay_ip or settings.udp_relay_address
    if not relay_ip:
        raise _RelayError("udp_relay_address: give --relay-ip or set udp_relay_address")
    db_url = database_url(settings.database, settings.data_dir)
    hub = _ws_hub(args, settings, db_url, relay_ip)
    pieces = _RelayPieces(
        db_url,
        relay_ip,
        args.relay_ports or settings.udp_relay_ports,
        args.relay_state_dir or settings.data_dir / "relay",
        args.userspace or settings.udp_relay_userspace,
        args.relay_instance,
        probe_port=DEFAULT_PROBE_PORT if args.relay_probe_port is None else args.relay_probe_port,
        ws_url=args.relay_ws_url,
    )
    if hub is not None:
        hub.start()  # listening before the first beat registers its URL
        pieces.extra_stats = hub.stats
    pieces.start_probe()
    pieces.start_listener()
    try:
        return run_relay(
            pieces.relay,
            pieces.reconciler,
            args.relay_metrics_listen or settings.udp_relay_metrics_listen,
        )
    finally:
        pieces.close()
        if hub is not None:
            hub.stop()


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
        # Its WebSocket relay is this server's own hub, which the route answer names as
        # before (relay_url / instance_relay_url): no relay host hub to route sessions to.
        ws_url=None,
    )
    relay, reconciler = pieces.relay, pieces.reconciler
    from higgs.relay.metrics import serve_metrics

    stop = threading.Event()
    relay.start()
    pieces.start_probe()
    # Other instances lease ports on this relay too (PostgreSQL): they reach it by NOTIFY.
    pieces.start_listener()
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
