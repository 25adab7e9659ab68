from __future__ import annotations

import pytest

from higgs.lab.names import IFNAMSIZ_MAX, RunNames, new_run_names


def test_names_carry_prefix_and_suffix() -> None:
    names = RunNames(prefix="hl", suffix="3fa9c1")
    assert names.stem == "hl-3fa9c1"
    assert names.ns("home_router") == "hl-3fa9c1-home_router"
    assert names.ifname("wgn") == "hl-3fa9c1-wgn"


def test_new_run_names_are_unique_and_valid() -> None:
    runs = {new_run_names().stem for _ in range(200)}
    assert len(runs) > 190  # 24 random bits: collisions are possible but rare
    assert all(stem.startswith("hl-") and len(stem) == 9 for stem in runs)


def test_interface_names_never_exceed_ifnamsiz() -> None:
    names = RunNames(prefix="hl", suffix="abcdef")
    assert len(names.ifname("wgc01")) == IFNAMSIZ_MAX
    with pytest.raises(ValueError, match="longer than 15"):
        names.ifname("wgc012")


@pytest.mark.parametrize(
    ("prefix", "suffix"), [("HL", "abcdef"), ("hl-x", "abcdef"), ("hl", "xyz123"), ("hl", "abc")]
)
def test_bad_prefix_or_suffix_is_refused(prefix: str, suffix: str) -> None:
    with pytest.raises(ValueError, match="lab"):
        RunNames(prefix=prefix, suffix=suffix)


def test_owns_only_names_of_the_same_run() -> None:
    names = RunNames(prefix="hl", suffix="abcdef")
    assert names.owns("hl-abcdef-node")
    assert names.owns("hl-abcdef")
    assert not names.owns("hl-abcdef0-node")
    assert not names.owns("hl-abcdee-node")
    assert not names.owns("eth0")


@pytest.mark.parametrize("tag", ["", "WG", "wg-n", "a" * 9])
def test_bad_interface_tag_is_refused(tag: str) -> None:
    with pytest.raises(ValueError, match="tag"):
        RunNames(prefix="hl", suffix="abcdef").ifname(tag)
