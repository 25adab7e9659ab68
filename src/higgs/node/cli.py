"""`higgsnode` command line: start, stop, status, diagnose, cleanup."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from higgs.common.cli import EXIT_FAILURE, EXIT_OK, new_parser, run_cli
from higgs.common.errors import HiggsError
from higgs.node.ownerstate import DASHBOARD_TOKEN_FILE, save_diagnose
from higgs.node.runstate import read_status, running_pid
from higgs.node.settings import NodeSettings, load_node_settings
from higgs.osnet.names import DEFAULT_INTERFACE

__all__ = ["build_parser", "main"]

STOP_WAIT_S = 60.0


def _settings_args(p: argparse.ArgumentParser, *, full: bool) -> None:
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    p.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="state directory (default /var/lib/higgsnode)"
    )
    p.add_argument(
        "--interface",
        metavar="NAME",
        help=f"WireGuard interface (default {DEFAULT_INTERFACE['node']})",
    )
    if not full:
        return
    p.add_argument("--server", metavar="URL", help="bosonserver URL, e.g. https://boson.example")
    p.add_argument("--enroll-key", metavar="KEY", help="enrollment key hge_… (first start)")
    p.add_argument("--listen-port", type=int, metavar="PORT", help="WireGuard UDP port (51820)")
    p.add_argument(
        "--endpoint",
        metavar="IP:PORT",
        help="public endpoint for direct mode (your router's public IP and forwarded port)",
    )
    p.add_argument(
        "--port-mapping",
        choices=["auto", "pcp", "natpmp", "upnp", "off"],
        help="ask the home router to map the WireGuard port: auto tries pcp, natpmp, upnp "
        "(default auto; off when you forwarded the port by hand)",
    )
    p.add_argument("--tunnel-subnet", metavar="CIDR", help="client network (10.77.0.0/24)")
    p.add_argument(
        "--ipv6",
        choices=["auto", "off"],
        help="forward clients' IPv6 with NAT66 when the uplink has internet IPv6 (auto)",
    )
    p.add_argument(
        "--tunnel-subnet-v6",
        metavar="CIDR",
        help="clients' IPv6 prefix, unique local (default: fdXX:XXXX:XXXX::/64 from the key)",
    )
    p.add_argument(
        "--firewall", choices=["auto", "nft", "iptables"], help="firewall backend (auto)"
    )
    p.add_argument("--country", metavar="CC", help="two-letter country code shown to clients")
    p.add_argument("--region", metavar="TEXT", help="region shown to clients")
    p.add_argument(
        "--dns-upstream",
        action="append",
        metavar="UPSTREAM",
        help="DNS upstream (repeatable): IP[:PORT], tcp://IP[:PORT] or https://URL; "
        "default: the nameservers of /etc/resolv.conf",
    )


def _command(
    sub: Any,
    name: str,
    help: str,
    description: str | None = None,
    *,
    full: bool = False,
    json_output: bool = False,
) -> argparse.ArgumentParser:
    """One subcommand: its settings options (all of them with ``full``) and ``--json``."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    _settings_args(parser, full=full)
    if json_output:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("higgsnode", "the Higgs.net exit-node agent")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _command(
        sub,
        "start",
        "run the node in the foreground until stopped",
        "Sets up WireGuard, NAT and DNS, registers with the server and serves "
        "clients until SIGTERM/SIGINT or `higgsnode stop`; then undoes every change.",
        full=True,
    )
    stop = _command(sub, "stop", "stop the running node (it undoes its changes)")
    stop.add_argument("--timeout", type=float, default=STOP_WAIT_S, help="seconds to wait")
    _command(sub, "status", "server API, peers, sessions, bytes", json_output=True)
    _command(
        sub,
        "diagnose",
        "check forwarding, NAT, routes, MTU, server, clock; print fixes",
        "Each failing check is printed with the command that fixes it; "
        "exit status 1 when any check fails.",
        full=True,
        json_output=True,
    )
    _command(
        sub,
        "cleanup",
        "undo what a crashed node left behind (journal replay, then sweep)",
        "Safe to run any time the node is not running (systemd runs it from "
        "ExecStopPost=). Exit status 0 when the host is clean.",
    )
    _command(
        sub,
        "dashboard",
        "print the owner page's URL and how to log in",
        "The running node serves its owner page and /metrics on a loopback "
        "address ([dashboard] listen). Log in with the token in the state directory.",
        json_output=True,
    )
    return parser


def _load(args: argparse.Namespace) -> NodeSettings:
    overrides: dict[str, Any] = {
        "state_dir": getattr(args, "state_dir", None),
        "interface": getattr(args, "interface", None),
        "server": getattr(args, "server", None),
        "enroll_key": getattr(args, "enroll_key", None),
        "listen_port": getattr(args, "listen_port", None),
        "endpoint": getattr(args, "endpoint", None),
        "port_mapping": getattr(args, "port_mapping", None),
        "tunnel_subnet": getattr(args, "tunnel_subnet", None),
        "ipv6": getattr(args, "ipv6", None),
        "tunnel_subnet_v6": getattr(args, "tunnel_subnet_v6", None),
        "firewall": getattr(args, "firewall", None),
        "country": getattr(args, "country", None),
        "region": getattr(args, "region", None),
    }
    upstreams = getattr(args, "dns_upstream", None)
    if upstreams:
        overrides["dns"] = {"upstreams": upstreams}
    return load_node_settings(args.config, overrides=overrides)


def _start(args: argparse.Namespace) -> int:
    settings = _load(args)  # a bad setting stops here, before anything touches the host
    if not settings.server:
        raise HiggsError("no server given: set --server URL (or `server` in the config file)")
    from higgs.node.agent import run_agent  # imported late: `status` must not need osnet

    run_agent(settings)
    return EXIT_OK


def _stop(args: argparse.Namespace) -> int:
    settings = _load(args)
    pid = running_pid(settings.state_dir)
    if pid is None:
        print(f"higgsnode is not running (state dir {settings.state_dir})")
        return EXIT_OK
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while running_pid(settings.state_dir) == pid:
        if time.monotonic() > deadline:
            raise HiggsError(
                f"higgsnode (pid {pid}) did not stop within {args.timeout:g}s; "
                f"check its log, or `kill -KILL {pid}` and then `higgsnode cleanup`"
            )
        time.sleep(0.1)
    print(f"higgsnode (pid {pid}) stopped")
    return EXIT_OK


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


def _portmap_line(pm: dict[str, Any] | None) -> str:
    line = _portmap_v4(pm)
    pinhole = (pm or {}).get("ipv6_pinhole") or {}
    if pinhole.get("endpoint"):
        line += f"; IPv6 pinhole {pinhole['endpoint']} by {pinhole.get('method')}"
    return line


def _portmap_v4(pm: dict[str, Any] | None) -> str:
    if not pm:
        return "-"
    if pm.get("state") == "off":
        return "off (port_mapping = off)"
    if pm.get("state") == "mapped":
        verified = {True: "verified by the server", False: "not verified", None: "verifying"}
        return (
            f"{pm.get('external_endpoint')} by {pm.get('method')} on {pm.get('gateway')}, "
            f"renewed in {pm.get('next_in_s')} s, {verified.get(pm.get('verified'), '?')}"
        )
    tried = "; ".join(
        f"{a.get('method')}: {a.get('reason')} ({a.get('detail')})"
        for a in pm.get("attempts") or []
    )
    return f"none ({tried or 'trying'})"


def _status(args: argparse.Namespace) -> int:
    settings = _load(args)
    pid = running_pid(settings.state_dir)
    status = read_status(settings.state_dir) if pid is not None else None
    if args.json:
        print(json.dumps({"running": pid is not None, "pid": pid, "status": status}, indent=1))
        return EXIT_OK if pid is not None else EXIT_FAILURE
    if pid is None:
        print(f"higgsnode: not running (state dir {settings.state_dir})")
        return EXIT_FAILURE
    if status is None:
        print(f"higgsnode: running (pid {pid}), starting up")
        return EXIT_OK
    server = status.get("server") or {}
    control = status.get("control") or {}
    peers = status.get("peers") or []
    rx = sum(int(p.get("rx_bytes", 0)) for p in peers)
    tx = sum(int(p.get("tx_bytes", 0)) for p in peers)
    print(f"higgsnode: running (pid {pid}), version {status.get('version')}")
    print(
        f"  interface  {status.get('interface')} {status.get('tunnel_address')} "
        f"port {status.get('listen_port')}, uplink {status.get('uplink')}"
    )
    mtu = status.get("mtu") or {}
    if mtu:
        print(f"  mtu        {mtu.get('mtu')} ({mtu.get('reason')})")
    print(
        f"  server     {server.get('state', '-')} (node {server.get('node_id') or '-'}"
        + (f", last error: {server['last_error']}" if server.get("last_error") else "")
        + ")"
    )
    print(
        f"  relay link {'up' if control.get('connected') else 'down'}, "
        f"{control.get('relayed_sessions', 0)} relayed session(s)"
    )
    if status.get("tunnel_address_v6"):
        state = "NAT66" if status.get("ipv6_active") else "rejected (uplink lost IPv6)"
        print(f"  ipv6       {status['tunnel_address_v6']}, {state}")
    else:
        print("  ipv6       rejected (no internet IPv6 on the uplink, or ipv6 = off)")
    print(f"  port map   {_portmap_line(status.get('port_mapping'))}")
    print(f"  sessions   {status.get('sessions', 0)}, peers {len(peers)}")
    print(f"  traffic    rx {_fmt_bytes(rx)}, tx {_fmt_bytes(tx)}")
    for p in peers:
        hs = p.get("last_handshake_s")
        prx, ptx = _fmt_bytes(int(p.get("rx_bytes", 0))), _fmt_bytes(int(p.get("tx_bytes", 0)))
        print(
            f"    {p['public_key'][:10]}… {','.join(p.get('allowed_ips', []))} "
            f"rx {prx} tx {ptx} handshake {'never' if hs is None else f'{hs:.0f}s ago'}"
        )
    return EXIT_OK


def _diagnose(args: argparse.Namespace) -> int:
    from higgs.node.diagnose import run_checks

    settings = _load(args)
    results = run_checks(settings, running=running_pid(settings.state_dir) is not None)
    failed = [r for r in results if not r.ok]
    with contextlib.suppress(OSError):  # the owner's page shows the last findings
        save_diagnose(settings.state_dir, [r.as_dict() for r in results], time.time())
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        for r in results:
            label = "FAIL" if not r.ok else "warn" if r.warn else "ok  "
            print(f"{label} {r.name}: {r.detail}")
            if (not r.ok or r.warn) and r.fix:
                print(f"     fix: {r.fix}")
    return EXIT_FAILURE if failed else EXIT_OK


def _cleanup(args: argparse.Namespace) -> int:
    from higgs.node.host import NodeHost

    settings = _load(args)
    pid = running_pid(settings.state_dir)
    if pid is not None:
        raise HiggsError(f"higgsnode is running (pid {pid}); stop it first: higgsnode stop")
    host = NodeHost(settings)
    try:
        problems = host.recover()
    finally:
        host.close()
    if problems:
        for problem in problems:
            print(f"higgsnode cleanup: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    print("higgsnode cleanup: host is clean")
    return EXIT_OK


def _dashboard(args: argparse.Namespace) -> int:
    settings = _load(args)
    token_file = settings.state_dir / DASHBOARD_TOKEN_FILE
    url = f"http://{settings.dashboard.listen}/"
    running = running_pid(settings.state_dir) is not None
    if args.json:
        print(json.dumps({"url": url, "token_file": str(token_file), "running": running}))
    else:
        print(url)
        print(f"log in with the token in {token_file} (sudo cat {token_file})")
        print(f"Prometheus metrics: {url}metrics")
        if not settings.dashboard.enabled:
            print("the dashboard is disabled ([dashboard] enabled = false)", file=sys.stderr)
        elif not running:
            print("higgsnode is not running: start it first", file=sys.stderr)
    return EXIT_OK if running and settings.dashboard.enabled else EXIT_FAILURE


_COMMANDS = {
    "start": _start,
    "stop": _stop,
    "status": _status,
    "diagnose": _diagnose,
    "cleanup": _cleanup,
    "dashboard": _dashboard,
}


def _dispatch(args: argparse.Namespace) -> int:
    return _COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _dispatch, argv)


if __name__ == "__main__":
    raise SystemExit(main())
