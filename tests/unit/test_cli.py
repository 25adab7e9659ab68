from __future__ import annotations

import subprocess

import pytest

from higgs import __version__
from higgs.lab.product import PROGRAMS, run_program


def _run(prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_program(prog, *args)


@pytest.mark.parametrize("prog", PROGRAMS)
def test_help_exits_zero_and_lists_commands(prog: str) -> None:
    result = _run(prog, "--help")
    assert result.returncode == 0
    assert "COMMAND" in result.stdout


@pytest.mark.parametrize("prog", PROGRAMS)
def test_version(prog: str) -> None:
    result = _run(prog, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"{prog} {__version__}"


@pytest.mark.parametrize("prog", PROGRAMS)
def test_usage_error_exits_2(prog: str) -> None:
    assert _run(prog, "--no-such-flag").returncode == 2
    assert _run(prog).returncode == 2
