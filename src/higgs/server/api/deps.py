"""Request dependencies: the server context, rate limits and the three kinds of caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from higgs.common.secrets import hash_token
from higgs.protocol.api import NODE_ID_PATTERN
from higgs.server.api.errors import DEFERRED_AUTH, RateLimited
from higgs.server.api.ratelimit import RateLimiter
from higgs.server.config import ServerSettings
from higgs.server.metrics import ServerMetrics
from higgs.server.services.devices import DeviceService
from higgs.server.services.errors import Forbidden, Unauthorized
from higgs.server.services.identity import AuthedClient, IdentityService, NodeClaim
from higgs.server.services.punch import PunchService
from higgs.server.services.registry import RegistryService
from higgs.server.services.sessions import SessionService
from higgs.server.services.traffic import TrafficSeries
from higgs.server.services.usage import UsageService
from higgs.server.services.web_sessions import AdminWebSessions
from higgs.server.store.db import Database

__all__ = [
    "AdminCaller",
    "ApiContext",
    "ClientCaller",
    "ClientWithinQuota",
    "Ctx",
    "HeartbeatCaller",
    "NodeCaller",
    "RegisterCredential",
    "check_rate",
    "get_ctx",
    "rate_limit",
]


@dataclass
class ApiContext:
    settings: ServerSettings
    db: Database
    metrics: ServerMetrics
    identity: IdentityService
    registry: RegistryService
    sessions: SessionService
    limiter: RateLimiter
    # --- issue 15: usage/quotas and the /admin dashboard ---
    usage: UsageService | None = None
    traffic: TrafficSeries | None = None
    # The operator dashboard's logins, in the database (a restart logs no one out).
    admin_sessions: AdminWebSessions = field(init=False)
    devices: DeviceService | None = None  # issue 18
    # Logins: a burst of 5 tries, then one per 10 s per address.
    login_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0.1, 5))
    # --- issue 12: hole punching ---
    punch: PunchService | None = None

    def __post_init__(self) -> None:
        self.admin_sessions = AdminWebSessions(self.db)


# Every dependency is ``async def`` although none awaits: FastAPI runs a plain ``def``
# dependency in its thread pool, two thread hand-offs per request for a dict lookup
# (bench/profile showed them at the top of the server's profile).


async def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer hg?_…")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def rate_limit(request: Request, ctx: Ctx, creds: Bearer) -> None:
    """Per source address, and per credential (valid or not: guessing costs tokens too).

    A request without any credential is not counted: it can only get its 401 (every /v1
    endpoint needs one), which costs no database work, and the caller learns what is wrong
    instead of being told to wait and then come back to the same 401."""
    if creds is None or not creds.credentials:
        return
    check_rate(ctx, request.client.host if request.client else None, creds.credentials)


def check_rate(ctx: ApiContext, host: str | None, credential: str) -> None:
    """:func:`rate_limit` for a request that presented ``credential`` from ``host``."""
    wait = ctx.limiter.take("addr:" + (host or "unknown"))
    kind = "address"
    if not wait:
        wait = ctx.limiter.take("cred:" + hash_token(credential))
        kind = "credential"
    if wait:
        ctx.metrics.rate_limited.labels(kind=kind).inc()
        raise RateLimited(ctx.limiter.retry_after_header(wait))


def _token(creds: HTTPAuthorizationCredentials | None, kind: str) -> str:
    if creds is None or not creds.credentials:
        raise Unauthorized("missing_token", f"send 'Authorization: Bearer <{kind}>'")
    return creds.credentials


async def _client(ctx: Ctx, creds: Bearer) -> AuthedClient:
    token = _token(creds, "client token hgc_…")
    if not token.startswith("hgc_"):
        raise Unauthorized("invalid_token", "this endpoint needs a client token (hgc_…)")
    return await ctx.identity.authenticate_client(token)


async def _admin(ctx: Ctx, creds: Bearer) -> None:
    token = _token(creds, "admin token hga_…")
    if not token.startswith("hga_"):
        raise Unauthorized("invalid_token", "this endpoint needs the admin token (hga_…)")
    await ctx.identity.check_admin(token)


NodeIdPath = Annotated[str, Path(pattern=NODE_ID_PATTERN, description="n_<16 hex>")]


async def _node(ctx: Ctx, creds: Bearer, node_id: NodeIdPath) -> str:
    token = _token(creds, "node token hgn_…")
    if not token.startswith("hgn_"):
        raise Unauthorized("invalid_token", "this endpoint needs a node token (hgn_…)")
    own = await ctx.identity.node_for_token(token)
    if own != node_id:
        raise Forbidden("forbidden", "a node token can act only for its own node")
    return own


async def _heartbeat_node(
    ctx: Ctx, creds: Bearer, node_id: NodeIdPath, request: Request
) -> NodeClaim:
    """:func:`_node` for the heartbeat, without a token lookup of its own: a token the cache
    does not know (every heartbeat of a node outlives the cache's TTL) is proved by the
    heartbeat's UPDATE instead (one statement where there were two transactions). Answers
    stay those of :func:`_node`: a request whose body is also invalid gets its 401/403 first
    (the validation error handler runs :attr:`DEFERRED_AUTH` before answering 422)."""
    token = _token(creds, "node token hgn_…")
    if not token.startswith("hgn_"):
        raise Unauthorized("invalid_token", "this endpoint needs a node token (hgn_…)")
    claim = ctx.identity.claim_node(token, node_id)
    if claim.token_hash is not None:

        async def check() -> None:
            if await ctx.identity.node_for_token(token) != node_id:
                raise Forbidden("forbidden", "a node token can act only for its own node")

        setattr(request.state, DEFERRED_AUTH, check)
    return claim


async def _register_credential(creds: Bearer) -> str:
    token = _token(creds, "enrollment key hge_… or node token hgn_…")
    if not token.startswith(("hge_", "hgn_")):
        raise Unauthorized(
            "invalid_token", "register with an enrollment key (hge_…) or the node's token (hgn_…)"
        )
    return token


ClientCaller = Annotated[AuthedClient, Depends(_client)]


async def _client_within_quota(ctx: Ctx, client: ClientCaller) -> AuthedClient:
    """A client that may open something new (a route, a device): authenticated, and its
    monthly quota not used up (issue 15: 403 ``quota_exceeded`` with the usage in the message).
    A dependency, so it runs before the body is validated and before the endpoint."""
    if ctx.usage is not None:
        await ctx.usage.check_quota(client.id)
    return client


ClientWithinQuota = Annotated[AuthedClient, Depends(_client_within_quota)]
AdminCaller = Annotated[None, Depends(_admin)]
NodeCaller = Annotated[str, Depends(_node)]
HeartbeatCaller = Annotated[NodeClaim, Depends(_heartbeat_node)]
RegisterCredential = Annotated[str, Depends(_register_credential)]
