"""A 409 ``conflict`` (the server's "a concurrent request changed the same record; retry") is
retried a bounded number of times with backoff; every other 409 is an answer, given at once."""

from __future__ import annotations

import json

import httpx
import pytest

from higgs.client.server_api import CONFLICT_RETRIES, ApiError, ServerApi
from tests.unit.client.test_connect import CLIENT_KEY, _route

RACE = {"error": "conflict", "message": "a concurrent request changed the same record; retry"}
KEY_IN_USE = {"error": "key_in_use", "message": "client_public_key is already used"}


class Server:
    """Answers ``POST /v1/routes`` with the given errors first, then the route."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        self.requests: list[dict[str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/v1/routes")
        self.requests.append(json.loads(request.content))
        if len(self.requests) <= len(self.errors):
            return httpx.Response(409, json=self.errors[len(self.requests) - 1])
        return httpx.Response(201, json=_route().model_dump(mode="json"))


def _api(server: Server, slept: list[float]) -> ServerApi:
    async def sleep(s: float) -> None:
        slept.append(s)

    return ServerApi(
        "http://198.51.100.10:8080", "hgc_" + "t" * 20,
        transport=httpx.MockTransport(server), sleep=sleep,
    )  # fmt: skip


async def test_a_race_is_retried_with_backoff_and_the_route_comes() -> None:
    server, slept = Server([RACE, RACE]), list[float]()
    async with _api(server, slept) as api:
        route = await api.route(CLIENT_KEY.public_b64())
    assert route.session_id == "s_0123456789abcdef"
    assert len(server.requests) == 3
    assert server.requests[0] == server.requests[2]  # the same request again
    assert len(slept) == 2
    assert all(0.05 <= s <= 2.0 for s in slept)


async def test_retries_are_bounded_then_the_conflict_is_reported() -> None:
    server, slept = Server([RACE] * 10), list[float]()
    async with _api(server, slept) as api:
        with pytest.raises(ApiError, match=r"HTTP 409.*retry") as caught:
            await api.route(CLIENT_KEY.public_b64())
    assert caught.value.code == "conflict"
    assert len(server.requests) == CONFLICT_RETRIES + 1
    assert len(slept) == CONFLICT_RETRIES
    assert sum(slept) <= CONFLICT_RETRIES * 2.0


async def test_another_409_is_not_retried() -> None:
    server, slept = Server([KEY_IN_USE]), list[float]()
    async with _api(server, slept) as api:
        with pytest.raises(ApiError, match="already used") as caught:
            await api.route(CLIENT_KEY.public_b64())
    assert caught.value.code == "key_in_use"
    assert len(server.requests) == 1
    assert slept == []
