"""Opening pyroute2 safely from sync and async callers, optionally in a network namespace.

Why a helper: pyroute2 0.9's synchronous ``IPRoute`` runs its own event loop and raises
"This event loop is already running" when created inside a coroutine. Our node and client are
asyncio programs, so a call made from a running loop runs in a short-lived worker thread.

Why not ``IPRoute(netns=...)``: pyroute2 opens a namespaced socket by ``fork()``ing the calling
process. Forking a multi-threaded test runner or agent copies its signal handlers and locks; a
child that was slow to answer got SIGTERM, ran the parent's handlers and carried on as a second
copy of the parent (seen as chains of pytest processes under load). Instead, a short-lived
thread of our own joins the namespace with ``setns(2)`` — the network namespace is per thread —
opens the socket there and does all its work before it ends. Nothing is forked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import os
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from higgs.osnet.errors import OsnetError

__all__ = [
    "NOT_FOUND_ERRNOS",
    "NamespaceNotFound",
    "NetlinkError",
    "call",
    "is_not_found",
    "open_iproute",
]

T = TypeVar("T")

# What "already gone" looks like in netlink replies (route/rule/link/address deletion).
NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL})


class NamespaceNotFound(OsnetError):
    """The network namespace named does not exist (and was not created by us)."""


def is_not_found(exc: BaseException) -> bool:
    """True for "already gone": the object, its device, or its whole namespace."""
    if isinstance(exc, NetlinkError):
        return exc.code in NOT_FOUND_ERRNOS
    return isinstance(exc, FileNotFoundError | NamespaceNotFound)


_CLONE_NEWNET = 0x40000000


def _enter_netns(netns: str) -> None:
    """Moves the calling thread (only) into the named network namespace."""
    try:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NamespaceNotFound(f"network namespace {netns!r} does not exist") from exc
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OsnetError(f"cannot enter network namespace {netns!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


def open_iproute() -> Any:
    """An IPRoute in the calling thread's network namespace."""
    return IPRoute()


def call(fn: Callable[[Any], T], netns: str | None = None) -> T:
    """Runs ``fn(ipr)`` with a fresh IPRoute (in ``netns``) and closes it afterwards."""

    def run() -> T:
        if netns is not None:
            _enter_netns(netns)  # this worker thread only; it ends with the call
        with open_iproute() as ipr:
            return fn(ipr)

    if netns is None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return run()
    # A fresh thread each time: a thread that joined a namespace must never be reused.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()
