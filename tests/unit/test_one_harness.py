"""One harness: only ``higgs.lab`` starts bosonserver, higgsnode and higgsvpn (docs/lab.md,
"Starting the product").

Tests, the demo and the benchmarks go through :mod:`higgs.lab.product` (in a lab, or on
loopback: ``loopback_program``, ``loopback_server``, ``run_program``), so that there is one
command line per program, one start, one wait and one stop. This test reads every Python file
of the tree and fails on any other place that runs one of the programs.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "src" / "higgs" / "lab"

# `python -m <module>`: the programs' modules (pyproject.toml's entry points and the CLIs
# behind them).
PROGRAM_MODULES = {"higgs.bosonserver", "higgs.server.cli", "higgs.node.cli", "higgs.client.cli"}
# The installed commands.
PROGRAM_NAMES = {"bosonserver", "higgsnode", "higgsvpn"}
# What starts a command: subprocess, asyncio, os, shutil.which (to run what it finds).
STARTERS = {
    "run", "Popen", "call", "check_call", "check_output", "create_subprocess_exec",
    "create_subprocess_shell", "system", "popen", "execv", "execvp", "execvpe", "spawnv",
    "spawnvp", "which",
}  # fmt: skip

# Not a harness: the product starting itself.
ALLOWED = {
    "src/higgs/client/process.py": "higgsvpn connect starts its own daemon (the product)",
    "tests/unit/test_one_harness.py": "this test's own lists",
}


def _is_program(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    first = value.split()[0]  # a shell line: its command
    return first.rsplit("/", 1)[-1] in PROGRAM_NAMES


def _call_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def program_starts(source: str) -> list[int]:
    """Lines of ``source`` that start one of the programs: a program's module named anywhere
    (``-m higgs.node.cli``: the module names mean nothing else), or a starter called with a
    program as its command (``"bosonserver"``, ``["higgsvpn", …]``, a shell line)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and node.value in PROGRAM_MODULES:
            lines.add(node.lineno)
        elif isinstance(node, ast.Call) and _call_name(node) in STARTERS and node.args:
            first = node.args[0]
            if isinstance(first, ast.List | ast.Tuple) and first.elts:
                first = first.elts[0]
            if isinstance(first, ast.Constant) and _is_program(first.value):
                lines.add(node.lineno)
    return sorted(lines)


def test_the_finder_sees_each_way_of_starting_a_program() -> None:
    starts = {
        'subprocess.run([sys.executable, "-m", "higgs.server.cli", "serve"])',
        'asyncio.create_subprocess_exec(sys.executable, "-m", "higgs.node.cli")',
        'argv = [sys.executable, "-m", "higgs.bosonserver"]',
        'MODULES = {"higgsvpn": "higgs.client.cli"}',
        'subprocess.Popen(["/usr/local/bin/bosonserver", "serve"])',
        'subprocess.run("higgsvpn connect --token x", shell=True)',
        'exe = shutil.which("higgsnode")',
        'os.execvp("bosonserver", ["bosonserver", "migrate"])',
    }
    for line in starts:
        assert program_starts(line) == [1], line


def test_the_finder_leaves_names_that_start_nothing() -> None:
    # Interface and table names, an HTTP user agent, a parser's program name, a docstring, an
    # error message's command.
    for line in (
        'CommandError(["bosonserver", "client", "add", "x"], None, "")',
        'PROCESSES = (("bosonserver", "higgs.server.app"), ("higgsnode", "higgs.node.agent"))',
        'runner.run(["ip", "link", "delete", "dev", "higgsnode"])',
        'assert (client.interface, client.nft_table) == ("higgsvpn", "higgsvpn")',
        'new_parser("bosonserver", "the Higgs.net central server")',
        'ServerApi(url, user_agent="higgsnode")',
        '"""``python -m higgs.server.cli serve`` on loopback."""',
        'find_spec("higgs.server.app")',
    ):
        assert program_starts(line) == [], line


def test_only_the_harness_starts_server_node_and_client() -> None:
    found: list[str] = []
    for top in ("src", "tests", "bench", "scripts"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if path.is_relative_to(HARNESS) or rel in ALLOWED or ".venv" in path.parts:
                continue
            text = path.read_text()
            # Parsing only what names a program keeps this test well under a second.
            if any(word in text for word in PROGRAM_NAMES | PROGRAM_MODULES):
                found += [f"{rel}:{n}" for n in program_starts(text)]
    assert found == [], (
        "bosonserver, higgsnode and higgsvpn are started by higgs.lab.product only (in a lab,"
        " or on loopback: loopback_program, loopback_server, run_program); found: "
        + ", ".join(found)
    )


def test_every_allowed_file_exists() -> None:
    assert [f for f in ALLOWED if not (ROOT / f).is_file()] == []
