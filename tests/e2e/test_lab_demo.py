"""`make demo` tells the product's story, `make demo-stock` the stock one, and a failing step
still tears everything down."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from higgs.lab.demo import STEPS
from higgs.lab.errors import LabError
from higgs.lab.lab import leftovers_of_run
from higgs.lab.names import RunNames
from higgs.lab.story import Step, StoryContext, run_story

pytestmark = [pytest.mark.e2e, pytest.mark.root]


def test_demo_shows_client_router_before_and_home_router_after() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "higgs.lab.demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "before the tunnel: 203.0.113.20 (client router)" in result.stdout
    assert "through the tunnel: 203.0.113.10 (home router)" in result.stdout
    assert "nothing left behind" in result.stdout


def test_make_demo_connects_through_the_relay_then_directly_and_leaves_nothing() -> None:
    # README's first command: the real bosonserver, higgsnode and higgsvpn in the lab.
    result = subprocess.run(
        [sys.executable, "-m", "higgs.lab.demo_product"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "before Higgs.net:      203.0.113.20 (client router)" in out
    assert "through the relay:     203.0.113.10 (home router)" in out
    assert "directly to the node:  203.0.113.10 (home router)" in out
    assert "after disconnecting:   203.0.113.20 (client router)" in out
    assert "nothing left behind" in out


def test_failing_step_reports_tears_down_and_exits_1() -> None:
    def broken(ctx: StoryContext) -> str:
        raise LabError("the node's cable is unplugged")

    out = io.StringIO()
    status = run_story("broken demo", [STEPS[0], Step("Breaking", broken), STEPS[1]], out=out)
    text = out.getvalue()
    assert status == 1
    assert "[2/3] Breaking ... FAILED" in text
    assert "the node's cable is unplugged" in text
    assert "[3/3]" not in text
    assert "nothing of hl-" in text
    stem = text.split("nothing of ")[1].split()[0]
    prefix, suffix = stem.split("-")
    assert leftovers_of_run(RunNames(prefix=prefix, suffix=suffix)) == []
