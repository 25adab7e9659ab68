"""Test-wide markers: tests marked ``root`` skip with a reason when not run as root."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_root = pytest.mark.skip(
        reason="needs root (network namespaces, nftables, WireGuard): run `make test` as root"
    )
    for item in items:
        if ("root" in item.keywords or "e2e" in item.keywords) and not IS_ROOT:
            item.add_marker(skip_root)


def _lab_leftovers() -> list[str]:
    """What of the labs this very process built is still on the machine.

    Only names of runs created by this process are checked: other engineers (and the other
    workers of a parallel run) build labs with the same prefix on this machine at the same
    time.
    """
    registry = sys.modules.get("higgs.lab.registry")
    if registry is None:
        return []  # no lab was ever built in this process
    from higgs.lab.lab import leftovers_of_run

    problems = [f"run {lab.names.stem} was never torn down" for lab in registry.live_labs()]
    problems += registry.teardown_all()
    for names in registry.created_runs():
        problems += [f"{names.stem}: {item}" for item in leftovers_of_run(names)]
    return problems


# Leftovers reported by parallel workers (pytest-xdist), gathered on the controller.
_WORKER_LEFTOVERS: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist controller: a worker ended; keep what it found left behind."""
    output = getattr(node, "workeroutput", None) or {}
    _WORKER_LEFTOVERS.extend(output.get("lab_leftovers", []))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if anything of a lab this process (or one of its workers) built is still
    on the machine — labs, and the osnet tests' namespaces, which register with the same
    registry."""
    problems = _lab_leftovers()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        # A worker: its exit status does not reach the controller, its output does.
        workeroutput["lab_leftovers"] = problems
        return
    problems += _WORKER_LEFTOVERS
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
