"""Test-wide markers: tests marked ``root`` skip with a reason when not run as root."""

from __future__ import annotations

import os
import sys

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_root = pytest.mark.skip(
        reason="needs root (network namespaces, nftables, WireGuard): run `make test` as root"
    )
    for item in items:
        if ("root" in item.keywords or "e2e" in item.keywords) and not IS_ROOT:
            item.add_marker(skip_root)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if anything of a lab this process built is still on the machine — labs,
    and the osnet tests' namespaces, which register with the same registry.

    Only names of runs created by this very process are checked: other engineers build labs
    with the same prefix on this machine at the same time.
    """
    registry = sys.modules.get("higgs.lab.registry")
    if registry is None:
        return  # no lab was ever built in this process
    from higgs.lab.lab import leftovers_of_run

    problems = [f"run {lab.names.stem} was never torn down" for lab in registry.live_labs()]
    problems += registry.teardown_all()
    for names in registry.created_runs():
        problems += [f"{names.stem}: {item}" for item in leftovers_of_run(names)]
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_sep("=", "lab leftovers after the session", red=True)
            for problem in problems:
                reporter.write_line(problem, red=True)
        else:
            print("lab leftovers after the session:", *problems, sep="\n  ", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
