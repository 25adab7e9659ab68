"""Puts our rules back when another program removes or changes them.

``nft flush ruleset``, an ``iptables-restore`` without ``--noflush``, a firewall manager's
reload: each wipes rules it did not write, ours included. :class:`RuleWatch` notices and
applies the backend's last plan again, and logs why.

How it notices: ``nft monitor`` prints a line for every change to the nf_tables ruleset of
this network namespace (iptables-nft's changes included), so a removal is seen within
:data:`SETTLE_S`, and the process costs nothing while nothing changes. A periodic comparison
of the backend's :meth:`~.base.FirewallBackend.fingerprint` with the one its last apply left
is the backstop: every :data:`BACKSTOP_S` with the monitor running, every :data:`POLL_S`
without it (legacy iptables, whose changes nf_tables never sees; no ``nft``). Our own
applies update the fingerprint under the backend's lock, so they are never taken for
someone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from higgs.osnet.errors import OsnetError
from higgs.osnet.runner import Runner, SubprocessRunner

from .base import FirewallBackend
from .iptables import IptablesBackend

__all__ = ["BACKSTOP_S", "POLL_S", "SETTLE_S", "RuleWatch", "WatchStats"]

log = logging.getLogger(__name__)

POLL_S = 2.0
BACKSTOP_S = 30.0
# After a change event, wait this long for the rest of its transaction (a flush is many
# events) before comparing: one check per burst.
SETTLE_S = 0.1
_PR_SET_PDEATHSIG = 1


@dataclass
class WatchStats:
    """What ``status`` and /metrics show of the watch."""

    events: bool = False  # True while nft monitor feeds the watch
    checks: int = 0
    restores: int = 0
    failures: int = 0
    last_reason: str | None = None
    last_restore_at: float | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "events": self.events,
            "checks": self.checks,
            "restores": self.restores,
            "failures": self.failures,
            "last_reason": self.last_reason,
            "last_restore_at": self.last_restore_at,
        }


def _die_with_parent() -> None:
    """In the monitor's child: a SIGKILLed agent must not leave ``nft monitor`` behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _what_changed(before: tuple[str, ...], now: tuple[str, ...]) -> str:
    if not now:
        return "removed"
    gone = [x for x in before if x not in now]
    text = "; ".join(gone[:3]) + (f" (+{len(gone) - 3} more)" if len(gone) > 3 else "")
    return f"changed ({text or 'rules added'})"


def events_see(backend: FirewallBackend) -> bool:
    """Whether nft monitor reports changes to this backend's rules (not legacy iptables')."""
    if isinstance(backend, IptablesBackend):
        return backend.tools.flavour != "legacy" and backend._makes_nft_tables()
    return True


class RuleWatch:
    """Watches one backend's rules; :meth:`run` until cancelled (cancelling waits for a
    repair in progress, so the rules are never put back after the caller removed them)."""

    def __init__(
        self,
        backend: FirewallBackend,
        *,
        what: str,
        netns: str | None = None,
        poll_s: float | None = None,
        backstop_s: float = BACKSTOP_S,
        use_events: bool = True,
        on_restore: Callable[[str], None] | None = None,
        check_runner: Runner | None = None,
    ) -> None:
        self.backend = backend
        self.what = what
        self.netns = netns
        self.poll_s = poll_s if poll_s is not None else POLL_S
        self.backstop_s = backstop_s
        self.use_events = use_events and events_see(backend)
        self.on_restore = on_restore
        self.stats = WatchStats()
        # The periodic checks would fill the log with `run: nft list …` lines at INFO.
        self._quiet: Runner = check_runner or SubprocessRunner(netns=netns, log_level=logging.DEBUG)
        self._changed = asyncio.Event()

    # --- the check (blocking: in a worker thread) ---------------------------------------------

    def check(self) -> str | None:
        """Compares the kernel with our last apply; puts the rules back when they differ.
        Returns why they were put back (None: they were intact)."""
        backend = self.backend
        with backend.lock:
            self.stats.checks += 1
            expected = backend.applied_fingerprint
            if backend.plan is None or not expected:
                return None  # not applied yet, or removed on purpose
            try:
                now = backend.fingerprint(self._quiet)
            except OsnetError as exc:  # a listing that timed out: try again next time
                self.stats.failures += 1
                log.warning("cannot read our %s firewall rules: %s", self.what, exc)
                return None
            if now == expected:
                return None
            why = _what_changed(expected, now)
            log.warning(
                "our %s firewall rules were %s by another program; putting them back",
                self.what,
                why,
                extra={"backend": backend.name, "table": backend.names.table, "why": why},
            )
            try:
                backend.reapply()
            except OsnetError as exc:
                self.stats.failures += 1
                log.error("putting our %s firewall rules back failed: %s", self.what, exc)
                return None
            self.stats.restores += 1
            kind = why.split(" ", 1)[0]
            self.stats.reasons[kind] = self.stats.reasons.get(kind, 0) + 1
            self.stats.last_reason = why
            self.stats.last_restore_at = time.time()
        log.info("our %s firewall rules are back", self.what, extra={"why": why})
        if self.on_restore is not None:
            self.on_restore(why)
        return why

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        monitor = await self._start_monitor() if self.use_events else None
        reader = asyncio.create_task(self._read(monitor)) if monitor is not None else None
        try:
            while True:
                events = reader is not None and not reader.done()
                self.stats.events = events
                interval = self.backstop_s if events else self.poll_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), interval)
                if self._changed.is_set():
                    await asyncio.sleep(SETTLE_S)
                    self._changed.clear()
                await self._check_in_thread()
        finally:
            if reader is not None:
                reader.cancel()
            if monitor is not None and monitor.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    monitor.kill()
                with contextlib.suppress(Exception):
                    await monitor.wait()

    async def _check_in_thread(self) -> None:
        job = asyncio.ensure_future(asyncio.to_thread(self.check))
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # The thread cannot be interrupted: let a repair finish before whoever cancelled
            # us removes the rules, or it would put them back afterwards.
            with contextlib.suppress(Exception):
                await job
            raise

    async def _start_monitor(self) -> asyncio.subprocess.Process | None:
        argv = ["nft", "monitor"]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            log.info(
                "no nft monitor (%s): checking our %s rules every %gs", exc, self.what, self.poll_s
            )
            return None
        log.info(
            "watching our %s firewall rules",
            self.what,
            extra={"events": "nft monitor", "backstop_s": self.backstop_s},
        )
        return proc

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            self._changed.set()
        log.warning(
            "nft monitor ended; checking our %s firewall rules every %gs", self.what, self.poll_s
        )
        self._changed.set()  # re-evaluate the interval now
