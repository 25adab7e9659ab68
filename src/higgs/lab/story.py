"""A demo as a list of named steps, printed as they run; the lab is torn down at the end.

Each step is a function of the shared :class:`StoryContext` returning a line to show (or
None). Stories are data, so a later demo swaps steps without touching the runner.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from .errors import LabError
from .lab import Lab

__all__ = ["Step", "StoryContext", "run_story"]


@dataclass
class StoryContext:
    """What steps share: the lab (once built) and anything they leave for later steps."""

    lab: Lab | None = None
    data: dict[str, object] = field(default_factory=dict)

    def require_lab(self) -> Lab:
        if self.lab is None:
            raise LabError("the lab is not built yet")
        return self.lab


@dataclass(frozen=True)
class Step:
    title: str
    action: Callable[[StoryContext], str | None]


def run_story(
    title: str, steps: Sequence[Step], *, out: TextIO = sys.stdout, summary: Sequence[str] = ()
) -> int:
    """Run ``steps`` in order; 0 when all succeed, 1 on the first failure. Always tears down."""

    def say(text: str = "", end: str = "\n") -> None:
        out.write(text + end)
        out.flush()

    say(title)
    say("=" * len(title))
    ctx = StoryContext()
    status = 0
    total = len(steps)
    started = time.monotonic()
    try:
        for number, step in enumerate(steps, 1):
            say(f"[{number}/{total}] {step.title} ...", end=" ")
            t0 = time.monotonic()
            try:
                detail = step.action(ctx)
            except Exception as exc:
                say(f"FAILED ({time.monotonic() - t0:.2f} s)")
                say(f"      what went wrong: {exc}")
                status = 1
                break
            say(f"ok ({time.monotonic() - t0:.2f} s)")
            for line in (detail or "").splitlines():
                say(f"      {line}")
    except KeyboardInterrupt:
        say("interrupted")
        status = 1
    finally:
        status = max(status, _teardown(ctx, say))
    if status == 0:
        say("")
        for line in summary:
            say(line.format(**{k: str(v) for k, v in ctx.data.items()}))
        say(f"done in {time.monotonic() - started:.1f} s, nothing left behind.")
    else:
        say("demo FAILED (the lab was torn down).")
    return status


def demo_main(title: str, steps: Sequence[Step], summary: Sequence[str]) -> int:
    """The entry point of a `make demo` story: refuses without root, then runs the story."""
    if os.geteuid() != 0:
        print("make demo needs root: it builds network namespaces.", file=sys.stderr)
        return 1
    return run_story(title, steps, summary=summary)


def _teardown(ctx: StoryContext, say: Callable[..., None]) -> int:
    if ctx.lab is None:
        return 0
    lab = ctx.lab
    say("[teardown] removing the lab ...", end=" ")
    status = 0
    try:
        lab.teardown()
    except LabError as exc:
        say(f"FAILED: {exc}")
        status = 1
    left = lab.leftovers()
    if left:
        say(f"left behind: {', '.join(left)}")
        return 1
    if status == 0:
        took = lab.timings.get("teardown", 0.0)
        say(f"ok ({took:.2f} s); checked: nothing of {lab.names.stem} remains")
    return status
