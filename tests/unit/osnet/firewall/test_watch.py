"""The rule watch's core: what counts as "our rules changed", and the repair."""

from __future__ import annotations

from higgs.osnet.firewall import NftBackend, NodePolicy
from higgs.osnet.firewall.nft import fingerprint
from higgs.osnet.firewall.watch import RuleWatch
from higgs.osnet.runner import RecordingRunner

from .variants import VARIANTS

NODE = VARIANTS["node_full"]
assert isinstance(NODE, NodePolicy)

LISTING = """table inet higgsnode_node1 {
\tset seen4 {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\telements = { 10.66.0.2 timeout 1m expires 59s }
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname "wg-node" ip daddr @blocked4 counter packets 3 bytes 180 reject
\t\toifname "eth0" accept
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "eth0" ip saddr 10.66.0.0/24 masquerade
\t}
}
"""


def test_nft_fingerprint_counts_rules_per_chain_and_ignores_counters_and_elements() -> None:
    assert fingerprint(LISTING) == ("chain forward: 2 rule(s)", "chain postrouting: 1 rule(s)")
    busier = LISTING.replace("packets 3 bytes 180", "packets 9000 bytes 1").replace(
        "10.66.0.2 timeout", "10.66.0.2 timeout 1m, 10.66.0.3 timeout"
    )
    assert fingerprint(busier) == fingerprint(LISTING)
    flushed_chain = LISTING.replace('\t\toifname "eth0" ip saddr 10.66.0.0/24 masquerade\n', "")
    assert fingerprint(flushed_chain) != fingerprint(LISTING)
    assert fingerprint("") == ()


def _applied() -> tuple[NftBackend, RecordingRunner]:
    runner = RecordingRunner()
    runner.script(["nft", "list", "table"], stdout=LISTING)
    backend = NftBackend(NODE.names, runner)
    backend.apply(NODE)
    return backend, runner


def test_intact_rules_are_left_alone() -> None:
    backend, runner = _applied()
    watch = RuleWatch(backend, what="node", check_runner=runner)
    applies = sum(1 for c in runner.calls if c[:2] == ("nft", "-f"))
    assert watch.check() is None
    assert sum(1 for c in runner.calls if c[:2] == ("nft", "-f")) == applies
    assert watch.stats.checks == 1
    assert watch.stats.restores == 0


def test_removed_rules_are_put_back_and_counted() -> None:
    backend, runner = _applied()
    watch = RuleWatch(backend, what="node", check_runner=runner)
    runner.script(["nft", "list", "table"], stdout="", returncode=1, times=1)  # flushed
    applies = [
        i for c, i in zip(runner.calls, runner.inputs, strict=True) if c[:2] == ("nft", "-f")
    ]
    assert watch.check() == "removed"
    again = [i for c, i in zip(runner.calls, runner.inputs, strict=True) if c[:2] == ("nft", "-f")]
    assert again == [*applies, applies[0]]  # the last plan applied again
    assert watch.stats.restores == 1
    assert watch.stats.reasons == {"removed": 1}
    assert watch.check() is None  # back, and the same again


def test_a_chain_emptied_by_another_program_is_a_change() -> None:
    backend, runner = _applied()
    watch = RuleWatch(backend, what="node", check_runner=runner)
    emptied = LISTING.replace('\t\toifname "eth0" ip saddr 10.66.0.0/24 masquerade\n', "")
    runner.script(["nft", "list", "table"], stdout=emptied, times=1)
    why = watch.check()
    assert why is not None
    assert why.startswith("changed (chain postrouting: 1 rule(s))")


def test_rules_we_removed_ourselves_are_not_put_back() -> None:
    backend, runner = _applied()
    watch = RuleWatch(backend, what="node", check_runner=runner)
    backend.remove()
    runner.script(["nft", "list", "table"], stdout="", returncode=1)
    applies = sum(1 for c in runner.calls if c[:2] == ("nft", "-f"))
    assert watch.check() is None
    assert sum(1 for c in runner.calls if c[:2] == ("nft", "-f")) == applies
