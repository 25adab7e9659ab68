"""Opening pyroute2 safely from sync and async callers, optionally in a network namespace.

Why a helper: pyroute2 0.9's synchronous ``IPRoute`` runs its own event loop and raises
"This event loop is already running" when created inside a coroutine. Our node and client are
asyncio programs, so a call made from a running loop runs in a short-lived worker thread.
``IPRoute(netns=...)`` creates a missing namespace by default (``flags=O_CREAT``); we pass
``flags=0`` so that a missing namespace is an error, never a silent new one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
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


def open_iproute(netns: str | None = None) -> Any:
    if netns is None:
        return IPRoute()
    try:
        return IPRoute(netns=netns, flags=0)
    except FileNotFoundError as exc:
        raise NamespaceNotFound(f"network namespace {netns!r} does not exist") from exc


def call(fn: Callable[[Any], T], netns: str | None = None) -> T:
    """Runs ``fn(ipr)`` with a fresh IPRoute (in ``netns``) and closes it afterwards."""

    def run() -> T:
        with open_iproute(netns) as ipr:
            return fn(ipr)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()
