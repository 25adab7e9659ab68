"""Runs every benchmark: ``python -m bench [--smoke]``."""

from __future__ import annotations

import sys

from bench.relay.__main__ import main as relay_main


def main() -> int:
    return relay_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
