"""`higgsvpn` command line: connect, disconnect, status, nodes, export, devices,
revoke-device, cleanup.

Settings come from ``--config FILE`` (TOML), then ``HIGGSVPN_*`` environment variables, then
flags (see :mod:`higgs.client.settings`). ``connect`` starts the background process that holds
the tunnel and returns once WireGuard's handshake completed; ``disconnect`` stops it, and it
undoes every host change on its way out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from higgs.client.process import ProcessError, fork_daemon
from higgs.client.settings import ClientSettings, load_client_settings
from higgs.client.status import format_status, read_status
from higgs.client.timings import with_process_start
from higgs.common.cli import new_parser, run_cli
from higgs.common.errors import ConfigError, HiggsError
from higgs.daemon import pidfile

__all__ = ["build_parser", "main"]


def _common(p: argparse.ArgumentParser, *, server: bool = False) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--state-dir", help="where the key, journal and status live")
    p.add_argument("--interface", help="WireGuard interface name (<= 15 characters)")
    if server:
        p.add_argument("--server", help="bosonserver URL, e.g. https://boson.example:8080")
        p.add_argument(
            "--token", help="client token hgc_… (prefer HIGGSVPN_TOKEN: flags show in ps)"
        )
        p.add_argument("--ca-file", help="CA certificate(s) to trust for https/wss")


def _route_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", help="use this node id")
    p.add_argument("--country", help="use a node in this country (two letters)")


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("higgsvpn", "the Higgs.net VPN client")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("connect", help="connect; returns once the tunnel is up")
    _common(p, server=True)
    _route_flags(p)
    p.add_argument("--mode", choices=["auto", "relay", "direct"], help="path (default auto)")
    p.add_argument(
        "--split",
        action="append",
        metavar="CIDR",
        help="tunnel only this prefix (repeatable); default: everything (full tunnel)",
    )
    ks = p.add_mutually_exclusive_group()
    ks.add_argument("--kill-switch", dest="kill_switch", action="store_true", default=None)
    ks.add_argument("--no-kill-switch", dest="kill_switch", action="store_false")
    p.add_argument("--resolv-conf", help="resolver file to manage (default /etc/resolv.conf)")
    p.add_argument("--handshake-timeout", type=float, help="seconds to wait for WireGuard")
    p.add_argument("--direct-timeout", type=float, help="seconds auto mode gives direct")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("disconnect", help="disconnect and undo every change")
    _common(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("status", help="node, mode, handshake, traffic, latency")
    _common(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("nodes", help="nodes available to this client")
    _common(p, server=True)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export", help="a WireGuard config (direct mode) for the official apps")
    _common(p, server=True)
    _route_flags(p)
    p.add_argument("-o", "--output", type=Path, help="write the config here (0600)")
    p.add_argument("--qr", action="store_true", help="show it as a QR code in the terminal")
    p.add_argument("--qr-png", type=Path, metavar="FILE", help="write the QR code as PNG")
    p.add_argument(
        "--name",
        help="make a device of this name: a config that lasts until revoked (else: a session)",
    )
    p.add_argument(
        "--replace", action="store_true", help="with --name: revoke a device of that name first"
    )

    p = sub.add_parser("devices", help="this account's devices (exported with --name)")
    _common(p, server=True)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("revoke-device", help="revoke a device: its config stops working")
    _common(p, server=True)
    p.add_argument("name")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("cleanup", help="undo what a crashed client left behind")
    _common(p)

    # No help= at all: argparse would list a SUPPRESS help as "==SUPPRESS==".
    p = sub.add_parser("_daemon")
    return parser


def _settings(args: argparse.Namespace) -> ClientSettings:
    g = vars(args)
    overrides: dict[str, Any] = {
        "server_url": g.get("server"),
        "token": g.get("token"),
        "state_dir": g.get("state_dir"),
        "interface": g.get("interface"),
        "ca_file": g.get("ca_file"),
        "node_id": g.get("node"),
        "country": g.get("country"),
        "mode": g.get("mode"),
        "split": g.get("split"),
        "kill_switch": g.get("kill_switch"),
        "resolv_conf": g.get("resolv_conf"),
        "handshake_timeout_s": g.get("handshake_timeout"),
        "direct_timeout_s": g.get("direct_timeout"),
    }
    return load_client_settings(file=g.get("config"), overrides=overrides)


def _need_token(settings: ClientSettings) -> None:
    if not settings.token:
        raise ConfigError("a client token is needed: --token hgc_… or HIGGSVPN_TOKEN")


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


# --- commands --------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _need_token(settings)
    running = pidfile.read(settings.pid_file)
    if running is not None:
        raise HiggsError(
            f"already connected (process {running.pid}); run `higgsvpn disconnect` first"
        )
    timeout = settings.direct_timeout_s + settings.handshake_timeout_s + 4 * settings.http_timeout_s

    def body() -> int:
        from higgs.client.daemon import run_daemon

        return run_daemon(settings)

    started = time.monotonic()
    answer = fork_daemon(body, log_file=settings.log_file, timeout=timeout)
    if not answer.get("ok"):
        raise HiggsError(f"could not connect: {answer.get('error', 'unknown error')}")
    daemon_timings = answer.get("timings")
    if isinstance(daemon_timings, dict):
        answer["timings"] = with_process_start(
            daemon_timings, (time.monotonic() - started) * 1000.0
        )
    where = ", ".join(str(p) for p in (answer.get("country"), answer.get("region")) if p)
    _print(
        args,
        answer,
        f"connected to node {answer['node_id']}"
        + (f" ({where})" if where else "")
        + f" via {answer['mode']}; tunnel address {answer['address']} on {answer['interface']}",
    )
    return 0


def _disconnect(args: argparse.Namespace) -> int:
    settings = _settings(args)
    running = pidfile.read(settings.pid_file)
    if running is None:
        undone = _replay(settings)
        text = "not connected" + (f"; undid {undone} leftover change(s)" if undone else "")
        _print(args, {"connected": False, "undone": undone}, text)
        return 0
    if not pidfile.stop(running, timeout=45):
        raise ProcessError(
            f"process {running.pid} did not stop within 45 s; see {settings.log_file}"
        )
    leftover = _journal_entries(settings)
    if leftover:
        raise HiggsError(
            f"disconnected, but {leftover} change(s) could not be undone; "
            f"see {settings.log_file} and run `higgsvpn cleanup`"
        )
    _print(args, {"connected": False, "disconnected": True}, "disconnected")
    return 0


def _journal_entries(settings: ClientSettings) -> int:
    try:
        data = json.loads(settings.journal_file.read_text())
        return len(data.get("entries", []))
    except (OSError, ValueError, AttributeError):
        return 0


def _replay(settings: ClientSettings) -> int:
    from higgs.client.host import replay_journal

    return replay_journal(settings)


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    running = pidfile.read(settings.pid_file)
    report = read_status(settings.status_file) if running is not None else None
    if running is None or report is None or report.pid != running.pid:
        state = "connecting" if running is not None else "not connected"
        _print(args, {"connected": False, "state": state}, state)
        return 0
    _print(args, report.to_json(), format_status(report))
    return 0


def _nodes(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _need_token(settings)

    # Imported here: the HTTP client (httpx, the API models) is most of a second of start-up
    # that status, disconnect, cleanup and every usage error would pay for nothing.
    from higgs.client.server_api import ServerApi

    async def fetch() -> Any:
        async with ServerApi(
            settings.server_url,
            settings.token,
            ca_file=settings.ca_file,
            timeout=settings.http_timeout_s,
        ) as api:
            return await api.nodes()

    listing = asyncio.run(fetch())
    rows = [
        f"{'NODE':<20} {'COUNTRY':<8} {'REGION':<16} {'STATE':<8} {'LOAD':>5}  DIRECT",
        *(
            f"{n.node_id:<20} {n.country or '-':<8} {(n.region or '-')[:16]:<16} "
            f"{n.state:<8} {n.load * 100:>4.0f}%  {'yes' if n.direct else 'no'}"
            for n in listing.nodes
        ),
    ]
    if not listing.nodes:
        rows.append("(no nodes available)")
    _print(args, listing.model_dump(mode="json"), "\n".join(rows))
    return 0


def _export(args: argparse.Namespace) -> int:
    from higgs.client.export import export_config

    settings = _settings(args)
    _need_token(settings)
    if args.name:
        import re

        from higgs.client.devices import export_device
        from higgs.protocol.devices import DEVICE_NAME_PATTERN

        if not re.match(DEVICE_NAME_PATTERN, args.name):
            raise ConfigError(
                f"--name: {args.name!r} is not a device name (1-32 of A-Z a-z 0-9 _ . -, "
                "starting with a letter or digit)"
            )

        text = asyncio.run(export_device(settings, args.name, replace=args.replace))
    elif args.replace:
        raise ConfigError("--replace: only with --name")
    else:
        text = asyncio.run(export_config(settings))
    if args.output:
        from higgs.common.keys import write_secret_file

        write_secret_file(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    if args.qr_png:
        from higgs.client.wgconfig import render_qr_png

        render_qr_png(text, args.qr_png)
        print(f"wrote {args.qr_png}", file=sys.stderr)
    if args.qr:
        from higgs.client.wgconfig import render_qr_terminal

        print(render_qr_terminal(text))
    if not (args.output or args.qr or args.qr_png):
        print(text, end="")
    return 0


def _devices(args: argparse.Namespace) -> int:
    from higgs.client.devices import format_devices, list_devices

    settings = _settings(args)
    _need_token(settings)
    listing = asyncio.run(list_devices(settings))
    _print(args, listing.model_dump(mode="json"), format_devices(listing))
    return 0


def _revoke_device(args: argparse.Namespace) -> int:
    from higgs.client.devices import revoke_device

    settings = _settings(args)
    _need_token(settings)
    info = asyncio.run(revoke_device(settings, args.name))
    _print(args, info.model_dump(mode="json"), f"device {info.name!r} revoked")
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    settings = _settings(args)
    running = pidfile.read(settings.pid_file)
    if running is not None:
        raise HiggsError(f"higgsvpn is running (process {running.pid}); use `higgsvpn disconnect`")
    from higgs.client.host import cleanup_host

    print(cleanup_host(settings))
    return 0


def _daemon(args: argparse.Namespace) -> int:
    from higgs.client.daemon import run_daemon

    try:
        settings = ClientSettings.model_validate(json.loads(sys.stdin.read()))
    except ValueError as exc:
        print(json.dumps({"ok": False, "error": f"bad settings on stdin: {exc}"}), flush=True)
        return 1
    return run_daemon(settings)


_COMMANDS = {
    "connect": _connect,
    "disconnect": _disconnect,
    "status": _status,
    "nodes": _nodes,
    "export": _export,
    "devices": _devices,
    "revoke-device": _revoke_device,
    "cleanup": _cleanup,
    "_daemon": _daemon,
}


def _dispatch(args: argparse.Namespace) -> int:
    return _COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _dispatch, argv)


if __name__ == "__main__":
    raise SystemExit(main())
