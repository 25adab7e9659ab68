"""Throwaway network namespaces for the firewall tests.

Every namespace, veth pair and process made here is removed when its context exits, also when
a test fails. Namespaces come from :class:`tests.integration.osnet.namespaces.Namespaces`:
lab-run names (other test runs share this machine) and the lab's session-end leftover check.
"""

from __future__ import annotations

import re
import secrets
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..namespaces import Namespaces

__all__ = ["ECHO", "Netns", "Session", "World", "netns", "normalise_ruleset", "unique", "veth"]

TIMEOUT = 20.0
ECHO = Path(__file__).with_name("echo.py")


def unique(prefix: str) -> str:
    """A name no concurrent test run will pick (other helpers share this machine)."""
    return f"{prefix}{secrets.token_hex(3)}"


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, *argv: str, input: str | None = None, check: bool = True, timeout: float = TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} in {self.name} failed: {result.stderr.strip()}")
        return result

    def ip(self, *args: str) -> None:
        self.run("ip", *args)

    def addr(self, dev: str, *cidrs: str) -> None:
        for cidr in cidrs:
            extra = ["nodad"] if ":" in cidr else []
            self.ip("addr", "add", cidr, "dev", dev, *extra)

    def ask(self, proto: str, addr: str, port: int, count: int = 1) -> list[str]:
        """Answers of the echo at addr:port as seen from here ("ERR <errno>" on failure)."""
        out = self.run(
            sys.executable, str(ECHO), "ask", proto, addr, str(port), str(count), timeout=30
        ).stdout
        return out.splitlines()

    def probe(self, *specs: str) -> dict[str, str]:
        """Answers for several "proto:addr:port" targets at once."""
        out = self.run(sys.executable, str(ECHO), "probe", *specs, timeout=30).stdout
        return dict(zip(specs, out.splitlines(), strict=True))

    def dgram(self, source: str, mark: int, addr: str, port: int) -> str:
        """The answer to one UDP datagram from ``[addr:]port`` ``source`` with ``mark``."""
        argv = [sys.executable, str(ECHO), "dgram", source, str(mark), addr, str(port)]
        return self.run(*argv, timeout=30).stdout.strip()

    def ask1(self, proto: str, addr: str, port: int) -> str:
        return self.ask(proto, addr, port)[0]


def veth(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
    """A veth pair created directly inside the two namespaces (no root-namespace names)."""
    subprocess.run(
        [
            "ip",
            "-n",
            a.name,
            "link",
            "add",
            a_if,
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name,
        ],
        check=True,
        timeout=TIMEOUT,
    )
    a.ip("link", "set", a_if, "up")
    b.ip("link", "set", b_if, "up")


@contextmanager
def netns(prefix: str = "hgfw") -> Iterator[Netns]:
    """A namespace ``hgf-<suffix>-<prefix>``; processes left inside are stopped with it."""
    spaces = Namespaces("hgf")
    try:
        yield Netns(spaces.new(prefix))
    finally:
        spaces.teardown()


class Session:
    """One long-lived TCP connection through the echo, driven line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.greeting = self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        return self.proc.stdout.readline().strip() if ready else "ERR no answer"

    def say(self, text: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._line()


class World:
    """Namespaces plus the echo processes started in them; stops everything on exit."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._procs: list[subprocess.Popen[str]] = []
        stack.callback(self._stop_all)

    def ns(self, prefix: str) -> Netns:
        return self._stack.enter_context(netns(prefix))

    def _start(self, argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._procs.append(proc)
        return proc

    def serve(self, ns: Netns, tag: str, *specs: str) -> None:
        """Starts an echo answering "<tag> <peer> <mss>" on each proto:addr:port spec."""
        proc = self._start(ns.argv(sys.executable, str(ECHO), "serve", tag, *specs))
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, f"echo {tag} did not start"
        assert proc.stdout.readline().strip() == "ready", f"echo {tag} did not start"

    def session(self, ns: Netns, addr: str, port: int) -> Session:
        return Session(self._start(ns.argv(sys.executable, str(ECHO), "session", addr, str(port))))

    def _stop_all(self) -> None:
        # Only the processes started here, by PID.
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


_COUNTERS = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")


def normalise_ruleset(text: str, *, drop_empty_tables: bool = False) -> str:
    """A ruleset dump without what changes by merely looking (comments, counters); with
    ``drop_empty_tables`` also without iptables tables that hold nothing but empty built-in
    chains with an ACCEPT policy (legacy iptables creates those by merely listing a table,
    and the kernel never deletes them)."""
    text = _COUNTERS.sub("", text)
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        current.append(line.rstrip())
        if line == "COMMIT":
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    kept = [
        b
        for b in blocks
        if not (
            drop_empty_tables
            and b[0].startswith("*")
            and all(
                ln.startswith((":", "*", "COMMIT"))
                and (not ln.startswith(":") or " ACCEPT " in ln + " ")
                for ln in b
            )
        )
    ]
    return "\n".join("\n".join(b) for b in kept)
