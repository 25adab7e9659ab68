"""Throwaway network namespaces for the OS-layer tests (our own, not the lab's).

Each test gets namespaces with unique lab-run names (:mod:`.namespaces`), torn down even when
the test fails, and checked at the end of the session by the lab's leftover check
(tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .namespaces import Namespaces, sh

__all__ = ["Namespaces", "NsCmd", "namespaces", "netns", "sh", "veth"]


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.teardown()


@pytest.fixture
def netns(namespaces: Namespaces) -> str:
    return namespaces.new("a")


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair between two namespaces (both ends up)."""
    sh("ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
       "netns", ns_b)  # fmt: skip
    sh("ip", "-n", ns_a, "link", "set", name_a, "up")
    sh("ip", "-n", ns_b, "link", "set", name_b, "up")


NsCmd = Callable[..., str]
