"""`bosonserver` command line.

``serve`` runs the server; every other command works on the database directly (``--data-dir``
for the default SQLite file, or ``--database postgresql://…``), so the operator needs no token
on the server host. Changes made by the CLI while a server runs take effect there within
``auth_cache_ttl_s`` (5 s; the server caches credential lookups that briefly) or at its next
sweep (sessions closed by ``client revoke`` are announced to their nodes).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from higgs.common import eventloop
from higgs.common.cli import new_parser, run_cli
from higgs.common.errors import ConfigError, HiggsError

# Everything else is imported by the command that needs it: `bosonserver --help`, `--version`
# and the database commands must not pay for the web stack (FastAPI, uvicorn: `serve` only)
# nor Alembic (`migrate` only); SQLAlchemy and pydantic only once a command runs.
if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from higgs.server.config import ServerSettings
    from higgs.server.store.db import Database

__all__ = ["build_parser", "main", "settings_from_args"]

T = TypeVar("T")


def _add_db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--data-dir", type=Path, help="state directory (default /var/lib/bosonserver)")
    p.add_argument("--database", help="postgresql://user@host/db (default: SQLite in data dir)")


def _add_udp_relay_options(p: argparse.ArgumentParser) -> None:
    """The UDP relay's settings (docs/protocol.md §5); the relay itself is started by the
    composition root (higgs.bosonserver), never by the server."""
    p.add_argument("--udp-relay-address", help="UDP relay address, IPv4 or IPv6 (default: none)")
    p.add_argument("--udp-relay-ports", help="FIRST-LAST relay ports (default 40000-49999)")
    p.add_argument(
        "--udp-relay-userspace", action="store_const", const=True, help="no kernel forwarding"
    )
    p.add_argument(
        "--no-udp-relay-embedded",
        dest="udp_relay_embedded",
        action="store_const",
        const=False,
        help="a separate `bosonserver relay` serves the UDP relay address",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("bosonserver", "the Higgs.net central server")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the API and the relay")
    _add_db_options(serve)
    serve.add_argument("--listen", help="REST API HOST:PORT (default 127.0.0.1:8080)")
    serve.add_argument("--relay-listen", help="relay HOST:PORT (default 127.0.0.1:8081)")
    serve.add_argument("--public-url", help="API base URL as clients reach it")
    serve.add_argument("--relay-url", help="relay base URL (ws[s]://host:port) put into answers")
    serve.add_argument("--bus", help="nats://host:port: run as one of several instances")
    serve.add_argument("--instance-id", help="this instance's name on the bus (default host-pid)")
    serve.add_argument("--instance-relay-url", help="this instance's own relay base URL")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain (HTTPS and WSS)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key")
    _add_udp_relay_options(serve)

    # Listed for --help only: the composition root (higgs.bosonserver) runs it.
    sub.add_parser("relay", help="run the UDP relay alone on this host (shared database)")

    mig = sub.add_parser("migrate", help="create or upgrade the database schema")
    _add_db_options(mig)

    enroll = sub.add_parser("enroll", help="node enrollment keys")
    enroll_sub = enroll.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = enroll_sub.add_parser("create", help="print a new enrollment key (hge_…)")
    _add_db_options(create)
    create.add_argument("--uses", type=int, default=1, help="registrations allowed (default 1)")
    create.add_argument("--expires", help="30m, 1h, 7d or an ISO time (default: never)")
    elist = enroll_sub.add_parser("list", help="list enrollment keys (never the keys)")
    _add_db_options(elist)
    elist.add_argument("--json", action="store_true")

    client = sub.add_parser("client", help="client accounts")
    client_sub = client.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = client_sub.add_parser("add", help="create a client and print its token (hgc_…)")
    _add_db_options(add)
    add.add_argument("name")
    clist = client_sub.add_parser("list", help="list clients (never their tokens)")
    _add_db_options(clist)
    clist.add_argument("--json", action="store_true")
    revoke = client_sub.add_parser("revoke", help="revoke a client and close its sessions")
    _add_db_options(revoke)
    revoke.add_argument("name")
    quota = client_sub.add_parser(
        "quota", help="set a client's monthly quota (MB both ways); a used-up quota refuses routes"
    )
    _add_db_options(quota)
    quota.add_argument("name")
    amount = quota.add_mutually_exclusive_group(required=True)
    amount.add_argument("--mb", type=float, help="megabytes (10^6 bytes) per UTC month")
    amount.add_argument("--unlimited", action="store_true", help="remove the quota")

    nodes = sub.add_parser("nodes", help="list nodes")
    _add_db_options(nodes)
    nodes.add_argument("--json", action="store_true")

    sessions = sub.add_parser("sessions", help="list sessions")
    _add_db_options(sessions)
    sessions.add_argument("--json", action="store_true")
    sessions.add_argument("--state", choices=["open", "closed"])

    device = sub.add_parser("device", help="devices: the accounts' long-lived stock-app peers")
    device_sub = device.add_subparsers(dest="action", metavar="ACTION", required=True)
    dlist = device_sub.add_parser("list", help="list devices (state, node, endpoint)")
    _add_db_options(dlist)
    dlist.add_argument("--json", action="store_true")
    dlist.add_argument("--revoked", action="store_true", help="also the revoked ones")
    drevoke = device_sub.add_parser("revoke", help="revoke a device (the node drops it)")
    _add_db_options(drevoke)
    drevoke.add_argument("device_id", help="d_… (from `device list`)")
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The settings a parsed command line means (the composition root reads them too)."""
    return _settings(args)


def _settings(args: argparse.Namespace) -> ServerSettings:
    from higgs.common.config import load_settings
    from higgs.server.config import ENV_PREFIX, ServerSettings

    overrides: dict[str, Any] = {
        "data_dir": args.data_dir,
        "database": args.database,
    }
    for name in ("listen", "relay_listen", "public_url", "relay_url", "tls_cert", "tls_key",
                 "udp_relay_address", "udp_relay_ports", "udp_relay_userspace",
                 "udp_relay_embedded", "bus", "instance_id", "instance_relay_url"):  # fmt: skip
        overrides[name] = getattr(args, name, None)
    return load_settings(
        ServerSettings, file=args.config, env_prefix=ENV_PREFIX, overrides=overrides
    )


async def _with_db(settings: ServerSettings, fn: Callable[[Database], Awaitable[T]]) -> T:
    from higgs.server.store.open import open_database

    db = await open_database(settings, auto_migrate=False)
    try:
        return await fn(db)
    finally:
        await db.dispose()


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[("" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _emit(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        _print_table(rows, columns)


# --- commands --------------------------------------------------------------------------------


async def _serve(
    settings: ServerSettings,
    collectors: Sequence[Collector] = (),
    on_leased: Callable[[], None] | None = None,
) -> int:
    # Imported here: the web stack is only needed to serve, not for the database commands.
    from higgs.server.app import BosonServer

    server = BosonServer(settings, collectors=collectors, on_leased=on_leased)
    await server.start()
    # Everything allocated so far (modules, the app, SQLAlchemy's caches) lives as long as
    # the process: keep it out of the collector's full passes, which otherwise walk it all
    # and stall every request in flight (seen as heartbeat p99 tails under load).
    gc.freeze()
    if server.new_admin_token:
        # Only where it is: a daemon's output ends up in the journal, and no log may hold
        # a credential (docs/security.md). `bosonserver migrate` shows it to the operator.
        print(
            f"admin token created in {server.admin_token_path} (0600; read it from there)",
            flush=True,
        )
    print(f"bosonserver: API {server.api_url}  relay {server.relay_base}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


async def _migrate(settings: ServerSettings) -> int:
    from higgs.server.services.identity import IdentityService
    from higgs.server.store import migrate
    from higgs.server.store.db import Database

    if settings.database is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(_db_url(settings))
    try:
        before = await migrate.current_revision(db)
        after = await migrate.upgrade(db)
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = await IdentityService(db).ensure_admin_token(settings.data_dir)
    finally:
        await db.dispose()
    print(f"database schema: {before or 'empty'} -> {after}")
    if token:
        print(f"admin token (shown once; also in {settings.data_dir / 'admin.token'}): {token}")
    return 0


def _db_url(settings: ServerSettings) -> str:
    from higgs.server.store.db import database_url

    return database_url(settings.database, settings.data_dir)


async def _enroll_create(db: Database, uses: int, expires: str | None) -> int:
    from higgs.server.services.clock import utcnow
    from higgs.server.services.identity import IdentityService, parse_expiry

    when = parse_expiry(expires, utcnow()) if expires else None
    key = await IdentityService(db).create_enrollment_key(uses, when)
    print(key)
    print(
        f"enrollment key: {uses} use(s), expires {when.isoformat() if when else 'never'}",
        file=sys.stderr,
    )
    return 0


async def _enroll_list(db: Database, as_json: bool) -> int:
    from higgs.server.services.identity import IdentityService

    rows = [
        {
            "id": r.id,
            "uses_left": r.uses_left,
            "expires_at": r.expires_at,
            "created_at": r.created_at,
        }
        for r in await IdentityService(db).list_enrollment_keys()
    ]
    _emit(rows, ["id", "uses_left", "expires_at", "created_at"], as_json)
    return 0


async def _client_add(db: Database, name: str) -> int:
    from higgs.server.services.identity import IdentityService

    token = await IdentityService(db).add_client(name)
    print(token)
    print(f"client {name!r} created; give it this token (shown once)", file=sys.stderr)
    return 0


async def _client_list(db: Database, as_json: bool) -> int:
    from higgs.server.services.clock import utcnow
    from higgs.server.services.identity import IdentityService
    from higgs.server.services.usage import month_of
    from higgs.server.store.usage import usage_by_client

    month = month_of(utcnow())
    async with db.begin() as conn:
        usage = await usage_by_client(conn, month)
    rows = []
    for r in await IdentityService(db).list_clients():
        rx, tx, quota = usage.get(r.name, (0, 0, None))
        rows.append(
            {
                "name": r.name,
                "created_at": r.created_at,
                "revoked": r.revoked,
                "revoked_at": r.revoked_at,
                "open_sessions": r.open_sessions,
                "month": month,
                "rx_bytes": rx,
                "tx_bytes": tx,
                "used_bytes": rx + tx,
                "quota_bytes": quota,
            }
        )
    _emit(rows, ["name", "revoked", "open_sessions", "used_bytes", "quota_bytes"], as_json)
    return 0


async def _client_quota(db: Database, name: str, mb: float | None) -> int:
    from higgs.server.services.errors import NotFound
    from higgs.server.store.usage import set_quota

    if mb is not None and mb < 0:
        raise ConfigError("--mb: must not be negative")
    quota = None if mb is None else int(mb * 1_000_000)
    async with db.begin() as conn:
        if await set_quota(conn, name, quota) is None:
            raise NotFound("client_not_found", f"no client named {name!r}")
    shown = "unlimited" if quota is None else f"{quota} bytes per month"
    # The running server closes open sessions over the quota at the node's next report.
    print(f"client {name!r}: quota {shown}")
    return 0


async def _client_revoke(db: Database, name: str) -> int:
    from higgs.server.services.identity import IdentityService
    from higgs.server.store.sessions import close_open_sessions
    from higgs.server.store.tables import Session as SessionRow

    client_id = await IdentityService(db).mark_revoked(name)
    closed = await close_open_sessions(db, "client_revoked", SessionRow.client_id == client_id)
    print(f"client {name!r} revoked; {len(closed)} session(s) closed")
    return 0


async def _nodes(db: Database, as_json: bool) -> int:
    from higgs.server.services.registry import admin_nodes

    # Whether a node's link is up is known only to the running server: left out here.
    listing = await admin_nodes(db, lambda _node_id: False)
    rows = [n.model_dump(mode="json", exclude={"connected"}) for n in listing.nodes]
    _emit(
        rows,
        ["node_id", "state", "country", "region", "endpoint", "open_sessions", "last_heartbeat_at"],
        as_json,
    )
    return 0


async def _sessions(db: Database, as_json: bool, state: str | None) -> int:
    from higgs.server.services.session_paths import with_paths
    from higgs.server.services.sessions import admin_sessions

    listing = await admin_sessions(db, lambda _session_id: (0, 0), state)
    rows = [
        x.model_dump(mode="json", exclude={"relay_datagrams", "relay_bytes"})
        for x in listing.sessions
    ]
    rows = await with_paths(db, rows)  # path and UDP relay port (issue 11)
    _emit(
        rows,
        [
            "session_id",
            "state",
            "client",
            "node_id",
            "address",
            "path",
            "relay_port",
            "expires_at",
            "close_reason",
        ],
        as_json,
    )
    return 0


async def _device_list(db: Database, settings: ServerSettings, as_json: bool, revoked: bool) -> int:
    from higgs.server.services.devices import admin_devices

    gone_after = timedelta(seconds=settings.device_node_gone_s)
    listing = await admin_devices(db, gone_after, revoked)
    rows = [d.model_dump(mode="json", exclude={"rx_bytes", "tx_bytes"}) for d in listing.devices]
    columns = ["device_id", "client", "name", "state", "node_id", "address", "endpoint"]
    _emit(rows, columns, as_json)
    return 0


async def _device_revoke(db: Database, device_id: str) -> int:
    from higgs.server.services.devices import REVOKED_REASON
    from higgs.server.services.errors import NotFound
    from higgs.server.store import devices
    from higgs.server.store.sessions import close_open_sessions
    from higgs.server.store.tables import Session as SessionRow

    record = await devices.by_id(db, device_id)
    if record is None:
        raise NotFound("device_not_found", f"no device {device_id}")
    await devices.mark_revoked(db, device_id, datetime.now(UTC))
    sid = record.device.session_id
    await close_open_sessions(db, REVOKED_REASON, SessionRow.id == sid)
    # The running server tells the node at its next sweep (reconcile).
    print(f"device {device_id} ({record.client}/{record.device.name}) revoked")
    return 0


def _dispatch(
    args: argparse.Namespace,
    collectors: Sequence[Collector] = (),
    on_leased: Callable[[], None] | None = None,
) -> int:
    settings = _settings(args)
    cmd = args.command
    if cmd != "migrate":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    action = getattr(args, "action", None)
    if cmd == "serve":
        return eventloop.run(_serve(settings, collectors, on_leased))
    if cmd == "migrate":
        return eventloop.run(_migrate(settings))
    if cmd == "enroll" and action == "create":
        return eventloop.run(
            _with_db(settings, lambda db: _enroll_create(db, args.uses, args.expires))
        )
    if cmd == "enroll" and action == "list":
        return eventloop.run(_with_db(settings, lambda db: _enroll_list(db, args.json)))
    if cmd == "client" and action == "add":
        return eventloop.run(_with_db(settings, lambda db: _client_add(db, args.name)))
    if cmd == "client" and action == "list":
        return eventloop.run(_with_db(settings, lambda db: _client_list(db, args.json)))
    if cmd == "client" and action == "revoke":
        return eventloop.run(_with_db(settings, lambda db: _client_revoke(db, args.name)))
    if cmd == "client" and action == "quota":
        mb = None if args.unlimited else args.mb
        return eventloop.run(_with_db(settings, lambda db: _client_quota(db, args.name, mb)))
    if cmd == "nodes":
        return eventloop.run(_with_db(settings, lambda db: _nodes(db, args.json)))
    if cmd == "sessions":
        return eventloop.run(_with_db(settings, lambda db: _sessions(db, args.json, args.state)))
    if cmd == "device" and action == "list":
        return eventloop.run(
            _with_db(settings, lambda db: _device_list(db, settings, args.json, args.revoked))
        )
    if cmd == "device" and action == "revoke":
        return eventloop.run(_with_db(settings, lambda db: _device_revoke(db, args.device_id)))
    if cmd == "relay":
        raise HiggsError("`relay` runs from the bosonserver program (higgs.bosonserver)")
    raise AssertionError(f"unhandled command {cmd} {action}")


def main(
    argv: Sequence[str] | None = None,
    *,
    collectors: Sequence[Collector] = (),
    on_leased: Callable[[], None] | None = None,
) -> int:
    """What the composition root hands ``serve`` of the embedded UDP relay: ``collectors``,
    read-only metric sources (they appear in /metrics and on the dashboard's relay page), and
    ``on_leased``, called when a session gets a relay port (the relay reads it at once)."""
    dispatch = functools.partial(_dispatch, collectors=collectors, on_leased=on_leased)
    return run_cli(build_parser(), dispatch, argv)


if __name__ == "__main__":
    raise SystemExit(main())
