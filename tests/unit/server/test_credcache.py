"""The credential cache: expiry, explicit invalidation, and the epoch that keeps a lookup
racing an invalidation from storing a stale principal."""

from __future__ import annotations

from higgs.server.services.credcache import CredentialCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entry_lives_for_the_ttl_then_is_looked_up_again() -> None:
    clock = FakeClock()
    cache: CredentialCache[str] = CredentialCache(5.0, clock=clock)
    cache.put("h1", "n_1", cache.epoch)
    clock.now += 4.9
    assert cache.get("h1") == "n_1"
    clock.now += 0.2
    assert cache.get("h1") is None
    assert len(cache) == 0


def test_drop_where_removes_matching_principals_only() -> None:
    cache: CredentialCache[str] = CredentialCache(60.0)
    cache.put("h1", "n_1", cache.epoch)
    cache.put("h2", "n_2", cache.epoch)
    cache.drop_where(lambda node_id: node_id == "n_1")
    assert cache.get("h1") is None
    assert cache.get("h2") == "n_2"


def test_lookup_started_before_an_invalidation_does_not_store() -> None:
    cache: CredentialCache[str] = CredentialCache(60.0)
    epoch = cache.epoch  # a request reads the epoch, then awaits the database …
    cache.drop_where(lambda _: True)  # … meanwhile the client is revoked
    cache.put("h1", "alice", epoch)  # the stale answer arrives
    assert cache.get("h1") is None
    cache.put("h1", "alice", cache.epoch)  # a lookup after the change may store
    assert cache.get("h1") == "alice"


def test_zero_ttl_caches_nothing_and_size_is_bounded() -> None:
    off: CredentialCache[str] = CredentialCache(0.0)
    off.put("h1", "x", off.epoch)
    assert off.get("h1") is None
    small: CredentialCache[int] = CredentialCache(60.0, max_entries=3)
    for i in range(10):
        small.put(f"h{i}", i, small.epoch)
        assert len(small) <= 3
    assert small.get("h9") == 9
