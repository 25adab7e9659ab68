"""The rate limit split between instances behind a round-robin balancer."""

from higgs.server.api.ratelimit import RateLimiter


def admitted(limiter: RateLimiter, requests: int, now: float) -> int:
    return sum(limiter.take("k", now) == 0.0 for _ in range(requests))


def test_two_instances_together_admit_the_configured_burst() -> None:
    one, two = RateLimiter(rate=10, burst=20, share=2), RateLimiter(rate=10, burst=20, share=2)
    # Round robin: each instance sees every other request of the burst.
    assert admitted(one, 30, 0.0) + admitted(two, 30, 0.0) == 20


def test_a_shared_limiter_refills_at_its_share_of_the_rate() -> None:
    limiter = RateLimiter(rate=10, burst=10, share=2)
    assert admitted(limiter, 5, 0.0) == 5
    assert limiter.take("k", 0.0) == 0.2  # one token at 5/s
    assert admitted(limiter, 10, 1.0) == 5  # refilled to its burst of 5 after a second


def test_the_embedded_server_keeps_the_whole_limit() -> None:
    assert admitted(RateLimiter(rate=10, burst=20), 30, 0.0) == 20
