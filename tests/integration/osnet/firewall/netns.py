"""Throwaway network namespaces for the firewall tests (no dependency on the lab package)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Netns", "netns", "unique"]

TIMEOUT = 20.0


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


@contextmanager
def netns(prefix: str = "hgfw") -> Iterator[Netns]:
    name = unique(prefix)
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=TIMEOUT)
    try:
        ns = Netns(name)
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=TIMEOUT)
