"""`bosonserver` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from higgs.common.cli import new_parser, run_cli
from higgs.common.errors import HiggsError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("bosonserver", "the Higgs.net central server")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("registry,", help="registry,")
    sub.add_parser("routing,", help="routing,")
    sub.add_parser("sessions,", help="sessions,")
    sub.add_parser("relay:serve", help="relay:serve")
    sub.add_parser("migrate", help="migrate")
    sub.add_parser("enroll", help="enroll")
    sub.add_parser("client", help="client")
    sub.add_parser("nodes", help="nodes")
    sub.add_parser("sessions", help="sessions")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    raise HiggsError(f"'{args.command}' is not implemented yet")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _dispatch, argv)


if __name__ == "__main__":
    raise SystemExit(main())
