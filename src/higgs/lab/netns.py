"""Running things inside a lab namespace: commands (``ip netns exec``) and sockets (setns).

Commands go through :func:`run`, which raises :class:`CommandError` carrying the argv.
:func:`netns_socket` creates a socket inside a namespace without a subprocess: a short-lived
thread enters the namespace (``setns`` is per thread), creates the socket and exits; the socket
stays in that namespace wherever it is used. Python 3.11 has no ``os.setns``, hence ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import CommandError, LabError

__all__ = [
    "NETNS_DIR",
    "netns_exists",
    "netns_socket",
    "ns_argv",
    "run",
    "wait_tcp_port",
]

NETNS_DIR = Path("/var/run/netns")
_CLONE_NEWNET = 0x40000000


def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed to run inside namespace ``ns`` (unchanged for the root namespace,
    ``""`` or None)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; with ``check``, a non-zero exit raises CommandError.
    ``env``: the whole environment (default: ours)."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            env=None if env is None else dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        err = exc.stderr or b""
        text = (out if isinstance(out, str) else out.decode(errors="replace")) + (
            err if isinstance(err, str) else err.decode(errors="replace")
        )
        raise CommandError(argv, None, text) from exc
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, f"{argv[0]}: not found") from exc
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout + proc.stderr)
    return proc


def netns_exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_socket(
    ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A new socket living in namespace ``ns`` (``""``: the root namespace, this process's)."""
    if not ns:
        return socket.socket(family, type, proto)
    target = NETNS_DIR / ns
    result: list[socket.socket] = []
    errors: list[BaseException] = []

    def enter_and_create() -> None:
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
                # Never hand out a socket from the wrong namespace (e.g. the host's).
                if os.stat("/proc/thread-self/ns/net").st_ino != os.fstat(fd).st_ino:
                    raise LabError(f"setns into {ns} did not take effect")
                result.append(socket.socket(family, type, proto))
            finally:
                os.close(fd)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=enter_and_create, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise LabError(f"cannot create a socket in namespace {ns}: {errors[0]}") from errors[0]
    return result[0]


def wait_tcp_port(ns: str, addr: str, port: int, *, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on ``addr:port`` as seen from ``ns``."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        sock = netns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)
            sock.connect((addr, port))
            return
        except OSError as exc:
            last = exc
        finally:
            sock.close()
        time.sleep(0.05)
    raise LabError(f"nothing listens on {addr}:{port} in {ns} after {timeout:.0f} s: {last}")
