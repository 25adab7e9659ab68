"""Process-wide bookkeeping: live labs, every run name created here, and last-chance teardown.

Teardown must happen even when a test run is interrupted, so the first lab built in a process
installs an atexit hook and SIGTERM/SIGINT handlers that tear down every live lab and then
hand the signal to whatever handler was there before. The handlers are installed whatever
disposition the process inherited: a shell that starts a background job without job control
hands it SIGINT ignored, and a lab must not then outlive an explicit `kill -INT` (the daemons'
``loop.add_signal_handler`` behaves the same). An inherited SIG_IGN counts as the default
action: tear down, then die of the signal. The set of run names created by this
process lets the test session check, at the very end, that nothing of ours remains without
touching other people's concurrent labs.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from .names import RunNames

__all__ = [
    "Teardownable",
    "created_runs",
    "forget",
    "live_labs",
    "register",
    "teardown_all",
]


class Teardownable(Protocol):
    names: RunNames

    def teardown(self) -> None: ...


_lock = threading.Lock()
_live: dict[str, Teardownable] = {}
_created: dict[str, RunNames] = {}
_installed = False
_owner_pid = 0
_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None
_previous: dict[int, _Handler] = {}


def register(lab: Teardownable) -> None:
    """Record a lab before it creates anything, so every exit path can tear it down."""
    with _lock:
        _live[lab.names.stem] = lab
        _created[lab.names.stem] = lab.names
    _install_once()


def forget(lab: Teardownable) -> None:
    with _lock:
        _live.pop(lab.names.stem, None)


def live_labs() -> list[Teardownable]:
    with _lock:
        return list(_live.values())


def created_runs() -> list[RunNames]:
    """Every run name this process created a lab under (for the session-end leftover check)."""
    with _lock:
        return list(_created.values())


def teardown_all() -> list[str]:
    """Tear down every live lab; returns the failures as text (never raises)."""
    problems: list[str] = []
    for lab in live_labs():
        try:
            lab.teardown()
        except Exception as exc:
            problems.append(f"{lab.names.stem}: {exc}")
    return problems


def _atexit() -> None:
    if os.getpid() != _owner_pid:
        return  # a forked child must never tear down its parent's labs
    for problem in teardown_all():
        print(f"lab teardown at exit: {problem}", file=sys.stderr)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _owner_pid:
        # A forked child inherited this handler: it owns no lab, so it only dies.
        os._exit(128 + signum)
    for problem in teardown_all():
        print(f"lab teardown on signal {signum}: {problem}", file=sys.stderr)
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    # Default action: die of the same signal, as if we had never caught it.
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _install_once() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    global _owner_pid
    _owner_pid = os.getpid()
    atexit.register(_atexit)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, OSError):
            previous = signal.getsignal(signum)
            _previous[signum] = signal.SIG_DFL if previous == signal.SIG_IGN else previous
            signal.signal(signum, _on_signal)
