"""The port mapper's pure parts (order, renewal and retry schedule) and its loop against
fake routers: journaled before asking, refusals forgotten, renewals reuse the mapping's
method and PCP nonce, stop and a crashed run's replay delete it."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from higgs.node.portmap import PortMapper, PortMapSetting, methods_for, renew_delay, retry_delay
from higgs.osnet.discovery import Uplink
from higgs.osnet.journal import Journal
from higgs.osnet.portmap import Method, PortMapError, PortMapping
from higgs.osnet.portmap import udp as pm_udp
from higgs.osnet.portmap import undo as pm_undo
from higgs.osnet.portmap import upnp as pm_upnp

GATEWAY, NODE_IP, PORT = "192.168.1.1", "192.168.1.10", 51820


def uplink(gateway: str | None = GATEWAY, ip: str = NODE_IP) -> Uplink:
    return Uplink("eth0", 2, 4, gateway, 0, 1500, (ipaddress.IPv4Interface(f"{ip}/24"),))


def test_order_of_methods() -> None:
    assert methods_for("auto") == (Method.PCP, Method.NATPMP, Method.UPNP)
    assert methods_for("natpmp") == (Method.NATPMP,)
    assert methods_for("off") == ()


@pytest.mark.parametrize(
    ("lifetime", "delay"), [(7200, 3600), (120, 60), (1, 1.0), (0, 1.0), (86400, 3600)]
)
def test_renewal_at_half_the_lifetime_bounded(lifetime: int, delay: float) -> None:
    assert renew_delay(lifetime) == delay


def test_retry_backs_off_to_a_ceiling() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4, 5, 6, 10)] == [30, 60, 120, 240, 480, 600, 600]


class FakeRouter:
    """Stands in for the three adapters; records what was asked and what the journal held
    at that moment (write-ahead)."""

    def __init__(self, journal: Journal, grants: dict[Method, bool]) -> None:
        self.journal = journal
        self.grants = grants
        self.asked: list[tuple[Method, dict[str, Any]]] = []
        self.deleted: list[tuple[str, dict[str, Any]]] = []

    def _ask(self, method: Method, **kw: Any) -> PortMapping:
        journaled = [e.undo for e in self.journal.entries if e.undo["method"] == method.value]
        assert journaled, f"{method} asked before it was journaled"
        self.asked.append((method, kw))
        if not self.grants.get(method):
            raise PortMapError(method, "port_unreachable", "nothing listens")
        return PortMapping(
            method, GATEWAY, NODE_IP, PORT, "203.0.113.10", PORT, 600, 0.0,
            nonce=kw.get("nonce", b"").hex(), location=kw.get("location", ""),
        )  # fmt: skip

    def _delete(self, method: str, **kw: Any) -> bool:
        self.deleted.append((method, kw))
        return True

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def pcp_map(gw: str, ip: str, port: int, life: int, nonce: bytes) -> PortMapping:
            return self._ask(Method.PCP, nonce=nonce)

        async def natpmp_map(gw: str, ip: str, port: int, life: int) -> PortMapping:
            return self._ask(Method.NATPMP)

        async def discover(gw: str) -> str:
            if not self.grants.get(Method.UPNP):
                raise PortMapError(Method.UPNP, "no_device", "no answer")
            return "http://192.168.1.1:5000/rootDesc.xml"

        async def upnp_map(gw: str, ip: str, port: int, life: int, location: str) -> PortMapping:
            return self._ask(Method.UPNP, location=location)

        monkeypatch.setattr(pm_udp, "pcp_map", pcp_map)
        monkeypatch.setattr(pm_udp, "natpmp_map", natpmp_map)
        monkeypatch.setattr(pm_upnp, "discover", discover)
        monkeypatch.setattr(pm_upnp, "upnp_map", upnp_map)
        monkeypatch.setattr(
            pm_udp, "pcp_delete_blocking",
            lambda gw, ip, port, nonce: self._delete("pcp", nonce=nonce),
        )  # fmt: skip
        monkeypatch.setattr(
            pm_udp, "natpmp_delete_blocking",
            lambda gw, port: self._delete("natpmp"),
        )  # fmt: skip
        monkeypatch.setattr(
            pm_undo, "_upnp_delete",
            lambda loc, port: self._delete("upnp", location=loc),
        )  # fmt: skip


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.json")


def mapper(journal: Journal, setting: PortMapSetting = "auto", **kw: Any) -> PortMapper:
    return PortMapper(
        setting, journal=journal, port=PORT, lifetime_s=600, uplink=kw.get("up", uplink), **{
            k: v for k, v in kw.items() if k != "up"
        }
    )  # fmt: skip


async def test_auto_falls_through_to_the_first_method_that_works(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = FakeRouter(journal, {Method.NATPMP: True})
    router.install(monkeypatch)
    changes: list[PortMapping | None] = []

    async def on_change(m: PortMapping | None) -> None:
        changes.append(m)

    pm = mapper(journal, on_change=on_change)
    got = await pm.round()
    assert got is not None
    assert got.method is Method.NATPMP
    assert [m for m, _ in router.asked] == [Method.PCP, Method.NATPMP]
    assert [a.method for a in pm.attempts] == [Method.PCP]  # kept: status shows why not PCP
    # Only the mapping that exists is journaled; the refused PCP attempt was forgotten.
    assert [e.undo["method"] for e in journal.entries] == ["natpmp"]
    assert changes == [got]
    assert pm.status()["external_endpoint"] == "203.0.113.10:51820"


async def test_renewal_reuses_the_method_and_the_pcp_nonce(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = FakeRouter(journal, {Method.PCP: True, Method.NATPMP: True})
    router.install(monkeypatch)
    pm = mapper(journal)
    first = await pm.round()
    again = await pm.round()
    assert first is not None
    assert again is not None
    assert [m for m, _ in router.asked] == [Method.PCP, Method.PCP]
    assert router.asked[0][1]["nonce"] == router.asked[1][1]["nonce"]
    assert len(journal) == 1  # a renewal is the same change
    assert journal.entries[0].undo["nonce"] == router.asked[0][1]["nonce"].hex()


async def test_a_failed_renewal_removes_the_mapping_and_tries_the_others(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = FakeRouter(journal, {Method.PCP: True, Method.UPNP: True})
    router.install(monkeypatch)
    pm = mapper(journal)
    await pm.round()
    router.grants[Method.PCP] = False
    got = await pm.round()
    assert got is not None
    assert got.method is Method.UPNP
    assert router.deleted[0][0] == "pcp"
    assert [e.undo["method"] for e in journal.entries] == ["upnp"]
    assert journal.entries[0].undo["location"].endswith("/rootDesc.xml")


async def test_no_method_works_reasons_are_kept(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeRouter(journal, {}).install(monkeypatch)
    pm = mapper(journal)
    assert await pm.round() is None
    assert pm.state == "failed"
    assert [(a.method.value, a.reason) for a in pm.attempts] == [
        ("pcp", "port_unreachable"), ("natpmp", "port_unreachable"), ("upnp", "no_device"),
    ]  # fmt: skip
    assert "pcp: port_unreachable" in (pm.why_none() or "")
    assert len(journal) == 0
    assert pm.failed_rounds == 1


async def test_no_gateway_is_a_reason_not_a_crash(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = FakeRouter(journal, {Method.PCP: True})
    router.install(monkeypatch)
    pm = mapper(journal, "pcp", up=lambda: uplink(gateway=None))
    assert await pm.round() is None
    assert pm.attempts[0].reason == "no_gateway"
    assert router.asked == []


async def test_stop_deletes_the_mapping(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    router = FakeRouter(journal, {Method.PCP: True})
    router.install(monkeypatch)
    pm = mapper(journal, "pcp")
    await pm.round()
    await pm.stop()
    assert router.deleted == [("pcp", {"nonce": router.asked[0][1]["nonce"]})]
    assert len(journal) == 0


async def test_a_crashed_runs_mapping_is_deleted_by_the_next_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.json"
    first = Journal(path)
    router = FakeRouter(first, {Method.UPNP: True})
    router.install(monkeypatch)
    await mapper(first, "upnp").round()
    first.close()  # the process dies: nothing is undone
    data = json.loads(path.read_text())
    assert data["entries"][0]["undo"]["op"] == "portmap_delete"
    with Journal(path) as second:
        assert second.replay() == 1
    assert router.deleted == [("upnp", {"location": "http://192.168.1.1:5000/rootDesc.xml"})]


def test_an_unreachable_router_counts_as_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The node moved networks: the old router is gone, the mapping expires on its own, and
    # the next start must not refuse to run.
    monkeypatch.setattr(pm_udp, "natpmp_delete_blocking", lambda gw, port: False)
    undo = pm_undo.portmap_delete(Method.NATPMP, GATEWAY, NODE_IP, PORT)
    from higgs.osnet import undo as undo_ops
    from higgs.osnet import undo_registry
    from higgs.osnet.runner import SubprocessRunner

    undo_registry.apply(undo, undo_ops.UndoContext(SubprocessRunner()))  # does not raise


def test_off_does_nothing(journal: Journal) -> None:
    pm = mapper(journal, "off")
    assert pm.state == "off"
    assert pm.why_none() is None


def uplink6(gateway: str | None = "fe80::1") -> Uplink:
    return Uplink(
        "eth0", 2, 6, gateway, 0, 1500,
        (ipaddress.IPv6Interface("2001:db8:1::10/64"), ipaddress.IPv6Interface("fe80::10/64")),
    )  # fmt: skip


async def test_ipv6_pinhole_by_pcp_is_journaled_renewed_and_closed(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, str, bytes]] = []

    async def pcp_map(gw: str, ip: str, port: int, life: int, nonce: bytes) -> PortMapping:
        assert any(e.undo["internal_ip"] == ip for e in journal.entries)  # write-ahead
        asked.append((gw, ip, nonce))
        return PortMapping(Method.PCP, gw, ip, port, ip, port, 600, 0.0, nonce=nonce.hex())

    deleted: list[str] = []

    def pcp_delete(gw: str, ip: str, port: int, nonce: bytes) -> bool:
        deleted.append(ip)
        return True

    monkeypatch.setattr(pm_udp, "pcp_map", pcp_map)
    monkeypatch.setattr(pm_udp, "pcp_delete_blocking", pcp_delete)
    pm = mapper(journal, "auto", uplink6=uplink6)
    hole = await pm.pinhole_round()
    assert hole is not None
    assert hole.endpoint == "[2001:db8:1::10]:51820"
    # A link-local gateway is reached through the uplink's interface.
    assert asked[0][:2] == ("fe80::1%eth0", "2001:db8:1::10")
    await pm.pinhole_round()
    assert asked[1][2] == asked[0][2]  # renewed with the same nonce
    assert pm.status()["ipv6_pinhole"]["endpoint"] == "[2001:db8:1::10]:51820"
    await pm.stop()
    assert deleted == ["2001:db8:1::10"]
    assert len(journal) == 0


async def test_no_ipv6_uplink_is_reported_not_tried(journal: Journal) -> None:
    pm = mapper(journal, "auto", uplink6=lambda: None)
    assert await pm.pinhole_round() is None
    assert pm.status()["ipv6_pinhole"]["reason"] == "no IPv6 default route with an internet address"
    assert len(journal) == 0
    assert await mapper(journal, "natpmp", uplink6=uplink6).pinhole_round() is None  # no v6


async def test_ipv6_pinhole_falls_back_to_upnp_journaled_with_the_routers_id(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PCP refused: UPnP's WANIPv6FirewallControl opens it; the journal's undo learns the
    router's UniqueID, renewals update that pinhole, stop deletes exactly it."""
    location = "http://[2001:db8:1::1]:5000/rootDesc.xml"
    calls: list[tuple[str, int | None]] = []

    async def pcp_map(gw: str, ip: str, port: int, life: int, nonce: bytes) -> PortMapping:
        raise PortMapError(Method.PCP, "port_unreachable", "nothing listens")

    async def discover(gw: str, interface: str = "") -> str:
        assert interface == "eth0"  # the uplink: the search socket's scope
        return location

    async def upnp_pinhole(
        gw: str, ip: str, port: int, life: int, location: str = "", pinhole_id: int | None = None
    ) -> PortMapping:
        undo = [e.undo for e in journal.entries if e.undo.get("pinhole")]
        assert undo, "asked before it was journaled"
        calls.append(("update" if pinhole_id is not None else "add", pinhole_id))
        return PortMapping(
            Method.UPNP, gw, ip, port, ip, port, life, 0.0, location=location,
            pinhole_id=7 if pinhole_id is None else pinhole_id,
        )  # fmt: skip

    deleted: list[tuple[str, str, int, int | None]] = []

    async def upnp_pinhole_delete(loc: str, ip: str, port: int, uid: int | None) -> None:
        deleted.append((loc, ip, port, uid))

    monkeypatch.setattr(pm_udp, "pcp_map", pcp_map)
    monkeypatch.setattr(pm_upnp, "discover", discover)
    monkeypatch.setattr(pm_upnp, "upnp_pinhole", upnp_pinhole)
    monkeypatch.setattr(pm_upnp, "upnp_pinhole_delete", upnp_pinhole_delete)
    pm = mapper(journal, "auto", uplink6=lambda: uplink6("2001:db8:1::1"))
    hole = await pm.pinhole_round()
    assert hole is not None
    assert hole.method is Method.UPNP
    assert hole.endpoint == "[2001:db8:1::10]:51820"
    assert pm.status()["ipv6_pinhole"]["method"] == "upnp"
    (entry,) = journal.entries  # the PCP attempt's entry was forgotten
    assert entry.undo["pinhole_id"] == 7
    await pm.pinhole_round()
    assert calls == [("add", None), ("update", 7)]
    await pm.stop()
    assert deleted == [(location, "2001:db8:1::10", PORT, 7)]
    assert len(journal) == 0


def test_pinhole_undo_without_the_id_asks_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed before the router's answer was journaled: the undo still finds the pinhole."""
    seen: list[int | None] = []

    async def upnp_pinhole_delete(loc: str, ip: str, port: int, uid: int | None) -> None:
        seen.append(uid)

    monkeypatch.setattr(pm_upnp, "upnp_pinhole_delete", upnp_pinhole_delete)
    record = pm_undo.portmap_delete(
        Method.UPNP, "2001:db8:1::1", "2001:db8:1::10", PORT, location="http://x/", pinhole=True
    )
    pm_undo.UNDO.apply(json.loads(json.dumps(record)), None)  # type: ignore[arg-type]
    assert seen == [None]
