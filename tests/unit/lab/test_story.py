"""The demo runner without a lab: progress lines, failure handling, exit codes."""

from __future__ import annotations

import io

from higgs.lab.errors import LabError
from higgs.lab.story import Step, StoryContext, run_story


def _note(key: str, value: str) -> Step:
    def action(ctx: StoryContext) -> str:
        ctx.data[key] = value
        return f"{key} is {value}"

    return Step(f"Noting {key}", action)


def test_all_steps_succeed_prints_progress_details_and_summary() -> None:
    out = io.StringIO()
    status = run_story(
        "story", [_note("a", "1"), _note("b", "2")], out=out, summary=["a={a} b={b}"]
    )
    text = out.getvalue()
    assert status == 0
    assert "[1/2] Noting a ... ok (" in text
    assert "      a is 1" in text
    assert "[2/2] Noting b ... ok (" in text
    assert "a=1 b=2" in text
    assert "nothing left behind" in text


def test_failed_step_stops_the_story_and_says_why() -> None:
    def broken(ctx: StoryContext) -> None:
        raise LabError("no route to the node")

    out = io.StringIO()
    status = run_story(
        "story", [_note("a", "1"), Step("Breaking", broken), _note("b", "2")], out=out
    )
    text = out.getvalue()
    assert status == 1
    assert "[2/3] Breaking ... FAILED" in text
    assert "what went wrong: no route to the node" in text
    assert "[3/3]" not in text
    assert "demo FAILED" in text


def test_interrupt_ends_with_failure() -> None:
    def interrupted(ctx: StoryContext) -> None:
        raise KeyboardInterrupt

    out = io.StringIO()
    assert run_story("story", [Step("Waiting", interrupted)], out=out) == 1
    assert "interrupted" in out.getvalue()
