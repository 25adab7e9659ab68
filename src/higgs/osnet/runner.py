"""The one command funnel: every command the OS layer runs goes through a :class:`Runner`.

Like sshuttle's ``linux.py`` and wg-quick's ``cmd()``: the argv is logged (redacted) before it
runs, and a failure raises one error type, :class:`~higgs.osnet.errors.CommandError`, carrying
argv, exit code and stderr. ``input`` is never logged — it may hold a private key.

Every module that runs commands takes a Runner, so unit tests pass a :class:`RecordingRunner`
and assert the exact ordered commands without touching the host.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from higgs.common.secrets import redact
from higgs.osnet.errors import CommandError

__all__ = [
    "DEFAULT_TIMEOUT",
    "CommandResult",
    "RecordingRunner",
    "Runner",
    "SubprocessRunner",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Runner(Protocol):
    """Runs one command. With ``check`` a non-zero exit raises CommandError."""

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult: ...

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> int:
        """Starts a long-running daemon (e.g. ``wireguard-go -f``) in the background and
        returns its PID; its stdout/stderr go to ``log_path`` (appended) or nowhere. The
        caller journals the PID; the process is not waited for here."""
        ...


class SubprocessRunner:
    """Runs commands for real. With ``netns`` they run inside that network namespace."""

    def __init__(self, netns: str | None = None, *, log_level: int = logging.INFO) -> None:
        self.netns = netns
        self._log_level = log_level
        # Kept so the interpreter can reap them; stopping is by PID from the journal.
        self._spawned: list[subprocess.Popen[bytes]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult:
        full = tuple(argv) if self.netns is None else ("ip", "netns", "exec", self.netns, *argv)
        log.log(self._log_level, "run: %s", redact(shlex.join(full)))
        try:
            proc = subprocess.run(
                full,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise CommandError(full, None, f"executable not found: {full[0]}") from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandError(full, None, f"timed out after {timeout:g}s") from exc
        result = CommandResult(full, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise CommandError(full, proc.returncode, proc.stderr)
        return result

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> int:
        full = tuple(argv) if self.netns is None else ("ip", "netns", "exec", self.netns, *argv)
        log.log(self._log_level, "spawn: %s", redact(shlex.join(full)))
        out = (
            subprocess.DEVNULL
            if log_path is None
            else os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        )
        try:
            # A new session: a Ctrl-C at our terminal must not kill the daemon before our own
            # ordered teardown does. `ip netns exec` execs, so the PID is the daemon's.
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=None if env is None else {**os.environ, **env},
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise CommandError(full, None, f"executable not found: {full[0]}") from exc
        finally:
            if out != subprocess.DEVNULL:
                os.close(out)
        self._spawned.append(proc)
        return proc.pid


@dataclass
class _Script:
    prefix: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    times: int | None  # None: forever


@dataclass
class RecordingRunner:
    """A fake funnel for unit tests: records every argv, answers with scripted results.

    Unscripted commands succeed with empty output. ``script(prefix, ...)`` makes commands
    starting with ``prefix`` return the given result (the latest matching script wins; with
    ``times`` it applies that many times only). ``answer``, when given, sees every command
    (spawned ones too) first: a fake that models a host answers from its model (or raises),
    None leaves the answer to the scripts.
    """

    calls: list[tuple[str, ...]] = field(default_factory=list)
    inputs: list[str | None] = field(default_factory=list)
    _scripts: list[_Script] = field(default_factory=list)
    next_pid: int = 5_000_000  # fake PIDs for spawn(): above any pid_max (2**22)
    answer: Callable[[tuple[str, ...]], CommandResult | None] | None = None

    def script(
        self,
        prefix: Sequence[str],
        *,
        returncode: int = 0,
        stdout: str = "",
        stderr: str = "",
        times: int | None = None,
    ) -> None:
        self._scripts.append(_Script(tuple(prefix), returncode, stdout, stderr, times))

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult:
        full = tuple(argv)
        self.calls.append(full)
        self.inputs.append(input)
        answered = self.answer(full) if self.answer is not None else None
        result = answered or CommandResult(full, 0, "", "")
        for scripted in reversed(self._scripts if answered is None else []):
            if full[: len(scripted.prefix)] == scripted.prefix and scripted.times != 0:
                if scripted.times is not None:
                    scripted.times -= 1
                result = CommandResult(full, scripted.returncode, scripted.stdout, scripted.stderr)
                break
        if check and result.returncode != 0:
            raise CommandError(full, result.returncode, result.stderr)
        return result

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> int:
        self.calls.append(tuple(argv))
        self.inputs.append(None)
        if self.answer is not None:
            self.answer(tuple(argv))
        self.next_pid += 1
        return self.next_pid

    @property
    def commands(self) -> list[list[str]]:
        """The recorded commands as lists (convenient to compare with literals)."""
        return [list(c) for c in self.calls]
