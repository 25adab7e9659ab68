"""`higgsnode` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from higgs.common.cli import new_parser, run_cli
from higgs.common.errors import HiggsError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("higgsnode", "the Higgs.net exit-node agent")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("start", help="start")
    sub.add_parser("stop", help="stop")
    sub.add_parser("status", help="status")
    sub.add_parser("diagnose", help="diagnose")
    sub.add_parser("cleanup", help="cleanup")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    raise HiggsError(f"'{args.command}' is not implemented yet")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _dispatch, argv)


if __name__ == "__main__":
    raise SystemExit(main())
