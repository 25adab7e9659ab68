"""Test-wide markers: tests marked ``root`` skip with a reason when not run as root."""

from __future__ import annotations

import os

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_root = pytest.mark.skip(
        reason="needs root (network namespaces, nftables, WireGuard): run `make test` as root"
    )
    for item in items:
        if ("root" in item.keywords or "e2e" in item.keywords) and not IS_ROOT:
            item.add_marker(skip_root)
