"""A real SIGTERM during a blocking start-up step: the step finishes, the stop is remembered,
and once the daemon runs its stop gets it (and every later signal)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

from higgs.daemon.stopsignals import StopSignals


async def test_a_sigterm_during_recovery_lets_it_finish_and_is_handed_over() -> None:
    signals = StopSignals.install()
    try:
        started, release = threading.Event(), threading.Event()
        finished: list[bool] = []

        def recovery() -> None:  # stands for the journal replay in a worker thread
            started.set()
            assert release.wait(10)
            finished.append(True)

        job = asyncio.ensure_future(asyncio.to_thread(recovery))
        await asyncio.to_thread(started.wait, 10)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs on the loop, soon after the signal
            if signals.requested:
                break
            await asyncio.sleep(0.01)
        assert signals.reason == "SIGTERM"
        assert not job.done()  # the recovery goes on
        release.set()
        await job
        assert finished == [True]

        stops: list[str] = []
        signals.hand_over(stops.append)
        assert stops == ["SIGTERM"]  # the early one, passed on at once
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):
            if len(stops) == 2:
                break
            await asyncio.sleep(0.01)
        assert stops == ["SIGTERM", "SIGINT"]
    finally:
        signals.remove()
