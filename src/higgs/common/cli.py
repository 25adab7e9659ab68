"""What every Higgs.net command line shares: --version, logging flags, exit codes.

Exit codes: 0 success, 1 failure (a :class:`HiggsError`; its message says what to do next),
2 usage error (argparse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from higgs import __version__
from higgs.common.errors import HiggsError
from higgs.common.logging import setup_logging

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "new_parser", "run_cli"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines to stderr")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default INFO)",
    )
    return parser


def run_cli(
    parser: argparse.ArgumentParser,
    dispatch: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parses ``argv``, sets up logging and runs ``dispatch``, mapping errors to exit codes."""
    args = parser.parse_args(argv)
    if getattr(args, "command", "") is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    setup_logging(json_lines=args.log_json, level=args.log_level)
    try:
        return dispatch(args)
    except HiggsError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
