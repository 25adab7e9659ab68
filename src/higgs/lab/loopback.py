"""The test process's own network namespace as a lab host: the product's programs on
127.0.0.1, for tests and benchmarks that need no namespace lab and no root (the server's
integration tests, the scale-out integration tests, the control-plane benchmark).

A :class:`Loopback` is what a :class:`~higgs.lab.lab.Lab` is to its hosts, for one host: it
starts the processes (:func:`~higgs.lab.procs.start_process`, the lab's), tracks them by PID and
stops them (:func:`~higgs.lab.procs.stop_processes`) when it closes. The programs themselves
come from :mod:`higgs.lab.product` (``loopback_program``, ``loopback_server``), as in a lab.

    with Loopback(workdir) as lo:
        nats = lo.host.popen(["nats-server", "-a", "127.0.0.1", "-p", str(port)], name="nats")
        nats.wait_listening(port)
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Interface
from pathlib import Path
from types import TracebackType

from .errors import LabError
from .host import Host
from .plan import HostPlan
from .procs import LabProcess, start_process, stop_processes

__all__ = ["LOOPBACK_IP", "Loopback", "free_port"]

LOOPBACK_IP = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick; another process may take it before
    ours binds it, which is rare enough on loopback to fail a run rather than retry)."""
    with socket.socket() as s:
        s.bind((LOOPBACK_IP, 0))
        port: int = s.getsockname()[1]
        return port


class Loopback:
    """One host, this process's namespace (``ns`` ``""``: commands run unwrapped), address
    127.0.0.1; logs in ``workdir``. ``cpus`` pins every process it starts (``taskset -c``), as
    the benchmarks want the server on a CPU of its own."""

    def __init__(self, workdir: Path, *, cpus: str | None = None, stop_timeout: float = 15.0):
        self.workdir = workdir
        self.cpus = cpus
        # A server's graceful shutdown (closing its links, its database) takes seconds.
        self.stop_timeout = stop_timeout
        plan = HostPlan("loopback", (("lo", IPv4Interface(f"{LOOPBACK_IP}/8")),))
        self.host = Host("loopback", "", plan, self)
        self._procs: list[LabProcess] = []
        self._closed = False

    @property
    def server(self) -> Host:
        """Where a ServerProgram on this loopback runs (as ``Lab.server`` in a lab)."""
        return self.host

    def spawn(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        name: str | None = None,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LabProcess:
        """Start ``argv`` in the background, tracked by PID; its log is ``<name>.log`` in the
        work directory (appended to: a restarted process continues its log)."""
        if self._closed:
            raise LabError("the loopback host is closed")
        label = name or Path(argv[0]).name
        self.workdir.mkdir(parents=True, exist_ok=True)
        run_argv = ["taskset", "-c", self.cpus, *argv] if self.cpus else list(argv)
        log_path = log or self.workdir / f"{label}.log"
        proc = start_process(
            argv, run_argv=run_argv, name=label, host=host.role, log=log_path, env=env
        )
        self._procs.append(proc)
        return proc

    @property
    def processes(self) -> list[LabProcess]:
        return list(self._procs)

    def log_tails(self, chars: int = 2500) -> str:
        """The end of every process log, for a failure report."""
        return "\n".join(
            f"--- {p.name} (pid {p.pid}, {'running' if p.alive() else 'exited'})\n"
            + p.log_text()[-chars:]
            for p in self._procs
        )

    def close(self) -> None:
        """Stop every process started here (SIGTERM together, SIGKILL what still runs after
        ``stop_timeout``); raises LabError naming any that survived SIGKILL."""
        self._closed = True
        problems = stop_processes(list(reversed(self._procs)), timeout=self.stop_timeout)
        if problems:
            raise LabError("; ".join(problems))

    def __enter__(self) -> Loopback:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
