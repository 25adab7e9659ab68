"""The owner's rate caps, measured with iperf3 through the real higgsnode (issue 6 item 3).

Two client hosts behind the client router, each with a stock WireGuard client configured from
its own route answer; the node's shaping set to CAP_MBIT in total each way and PER_CLIENT_MBIT
per client, so one client alone is held to its own cap and two at once share the total.
iperf3 runs against the lab's internet host (two servers, so both clients measure at once).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from higgs.lab.host import Host
from higgs.lab.lab import IPERF_PORTS, Lab
from higgs.lab.plan import default_plan
from higgs.lab.product import Product, serving_stock_clients
from higgs.lab.stock import StockClient

pytestmark = [pytest.mark.e2e, pytest.mark.root]

CAP_MBIT = 20
PER_CLIENT_MBIT = 12  # above half the total: two clients at once are held by the total
SECONDS = 5
TOLERANCE = 0.10  # of the cap, as issue 6 asks
# Of an equal split, for two TCP flows started by two processes at (nearly) the same moment:
# start skew and TCP's own dynamics move a 5-second share by ~10%; an unfair shaper (one
# client starving the other, or no per-client classes) is far outside 25%.
FAIR_TOLERANCE = 0.25


@dataclass
class Shaped:
    lab: Lab
    product: Product
    clients: list[StockClient]


@pytest.fixture(scope="module")
def shaped() -> Iterator[Shaped]:
    lab = Lab(plan=default_plan(clients=2)).build()
    config = (
        f"[shaping]\ntotal_down_mbit = {CAP_MBIT}\ntotal_up_mbit = {CAP_MBIT}\n"
        f"per_client_mbit = {PER_CLIENT_MBIT}\n"
    )
    try:
        with serving_stock_clients(lab, [lab.client, lab.host("client2")], config=config) as (
            product,
            clients,
        ):
            yield Shaped(lab, product, clients)
    finally:
        lab.teardown()
    assert not lab.leftovers()


def iperf(lab: Lab, host: Host, port: int, *, download: bool) -> float:
    """Mbit/s received over SECONDS (the first second, TCP's slow start, omitted)."""
    argv = ["iperf3", "-c", lab.internet.ip, "-p", str(port), "-t", str(SECONDS), "-O", "1", "-J"]
    if download:
        argv.append("-R")  # the internet host sends: the client downloads
    result = json.loads(host.run(argv, timeout=SECONDS + 30).stdout)
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6


def within(rate: float, cap: float, tolerance: float = TOLERANCE) -> bool:
    return abs(rate - cap) <= tolerance * cap


@pytest.mark.parametrize("download", [True, False], ids=["download", "upload"])
def test_one_client_gets_its_per_client_cap(shaped: Shaped, download: bool) -> None:
    lab = shaped.lab
    rate = iperf(lab, lab.client, IPERF_PORTS[0], download=download)
    print(f"one client, {'down' if download else 'up'}: {rate:.2f} Mbit/s (cap {PER_CLIENT_MBIT})")
    assert within(rate, PER_CLIENT_MBIT), f"{rate:.2f} Mbit/s not within 10% of {PER_CLIENT_MBIT}"


@pytest.mark.parametrize("download", [True, False], ids=["download", "upload"])
def test_two_clients_at_once_share_the_total_fairly(shaped: Shaped, download: bool) -> None:
    lab = shaped.lab
    hosts = [lab.client, lab.host("client2")]
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(iperf, lab, h, port, download=download)
            for h, port in zip(hosts, IPERF_PORTS, strict=True)
        ]
        rates = [f.result() for f in futures]
    way = "down" if download else "up"
    print(f"two clients, {way}: {rates[0]:.2f} + {rates[1]:.2f} Mbit/s (total cap {CAP_MBIT})")
    assert within(sum(rates), CAP_MBIT), rates
    for rate in rates:
        assert within(rate, CAP_MBIT / 2, FAIR_TOLERANCE), f"{rates} is not a fair split"
