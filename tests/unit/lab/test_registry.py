"""The last-chance teardown does not depend on the signal dispositions a process inherits."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

# A child that registers a fake lab (no namespaces: nothing here needs root), then signals
# itself. The teardown prints a marker, so the parent sees it ran before the process died.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from higgs.lab import registry
    from higgs.lab.names import RunNames

    class FakeLab:
        names = RunNames(prefix="hl", suffix="abc123")
        def teardown(self):
            registry.forget(self)  # as Lab.teardown does
            print("torn down", flush=True)

    registry.register(FakeLab())
    os.kill(os.getpid(), int(sys.argv[1]))
    print("survived", flush=True)
    """
)


def _ignoring(signum: int) -> None:
    # What a non-interactive shell does to a job it starts with `&`.
    signal.signal(signum, signal.SIG_IGN)


@pytest.mark.parametrize("inherited", ["default", "ignored"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_tears_down_and_kills_whatever_the_inherited_disposition(
    signum: signal.Signals, inherited: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(int(signum))],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=(lambda: _ignoring(signum)) if inherited == "ignored" else None,
        check=False,
    )
    assert proc.stdout.splitlines() == ["torn down"], proc.stderr
    assert proc.returncode == -signum
