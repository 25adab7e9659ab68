"""Every rendered variant is accepted by the kernel (check mode; nothing is committed)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from higgs.osnet.firewall import iptables_render, nft_render
from tests.unit.osnet.firewall.variants import VARIANTS

from .netns import Netns, netns

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def ns() -> Iterator[Netns]:
    with netns("hgfwc") as n:
        yield n


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_nft_check_mode_accepts(ns: Netns, variant: str) -> None:
    ns.run("nft", "-c", "-f", "-", input=nft_render.render(VARIANTS[variant]))
    assert ns.run("nft", "list", "ruleset").stdout.strip() == ""  # check mode commits nothing


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_iptables_restore_test_mode_accepts(ns: Netns, variant: str, flavour: str) -> None:
    if not shutil.which(f"iptables-{flavour}-restore"):
        pytest.skip(f"iptables-{flavour}-restore not installed")
    v4, v6 = iptables_render.render(VARIANTS[variant])
    ns.run(f"iptables-{flavour}-restore", "--noflush", "--test", input=v4.restore_script())
    ns.run(f"ip6tables-{flavour}-restore", "--noflush", "--test", input=v6.restore_script())
