"""The /v1 endpoints (docs/protocol.md §2) and the unversioned probes."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from higgs.protocol.api import (
    CLIENT_NAME_PATTERN,
    SESSION_ID_PATTERN,
    AdminClient,
    AdminClientList,
    AdminNodeList,
    AdminSessionList,
    ClientCreated,
    ClientCreateRequest,
    ClientQuotaRequest,
    EnrollmentKeyCreated,
    EnrollmentKeyRequest,
    Health,
    HeartbeatRequest,
    HeartbeatResponse,
    KeyChallenge,
    NodeList,
    NodeRegisterRequest,
    NodeRegisterResponse,
    PunchAnswer,
    ReachabilityConfirm,
    ReachabilityResult,
    RelayList,
    RouteRequest,
    RouteResponse,
    SessionInfo,
)
from higgs.server.api import paths  # noqa: F401 - registers the {…:node_id} path convertors
from higgs.server.api.deps import (
    AdminCaller,
    ClientCaller,
    ClientWithinQuota,
    Ctx,
    HeartbeatCaller,
    NodeCaller,
    RegisterCredential,
    rate_limit,
)
from higgs.server.api.errors import documented_errors
from higgs.server.services.clock import utcnow
from higgs.server.services.errors import Unavailable

__all__ = ["probes", "v1"]


v1 = APIRouter(prefix="/v1", dependencies=[Depends(rate_limit)])
probes = APIRouter()

SessionIdPath = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description="s_<16 hex>")]


# --- nodes -----------------------------------------------------------------------------------


@v1.post(
    "/nodes/register",
    response_model=NodeRegisterResponse,
    status_code=201,
    responses={200: {"model": NodeRegisterResponse}, **documented_errors(401, 403, body=True)},
    tags=["nodes"],
    summary="Register or re-register a node (201 new, 200 known public key)",
)
async def register_node(
    body: NodeRegisterRequest,
    ctx: Ctx,
    credential: RegisterCredential,
    response: Response,
    request: Request,
) -> NodeRegisterResponse:
    answer, created = await ctx.registry.register(credential, body, source=_source(request))
    response.status_code = 201 if created else 200
    return answer


@v1.post(
    "/nodes/challenge",
    response_model=KeyChallenge,
    responses=documented_errors(401),
    tags=["nodes"],
    summary="A single-use nonce and the server's key, to prove the node's private key",
)
async def key_challenge(ctx: Ctx, credential: RegisterCredential) -> KeyChallenge:
    assert ctx.registry.challenges is not None
    return ctx.registry.challenges.issue()


@v1.post(
    "/nodes/{node_id:node_id}/heartbeat",
    response_model=HeartbeatResponse,
    responses=documented_errors(401, 403, 404, 409, body=True),
    tags=["nodes"],
)
async def heartbeat(
    body: HeartbeatRequest, ctx: Ctx, claim: HeartbeatCaller, request: Request
) -> HeartbeatResponse:
    return await ctx.registry.heartbeat(claim.node_id, body, source=_source(request), claim=claim)


def _source(request: Request) -> str | None:
    """The caller's address as this server sees it (a node's heartbeat from a new one: its
    public address changed, and a port mapping it reports may be stale)."""
    return request.client.host if request.client else None


@v1.post(
    "/nodes/{node_id}/reachability",
    response_model=ReachabilityResult,
    responses=documented_errors(401, 403, 404, 409, body=True),
    tags=["nodes"],
    summary="The nonce of a reachability probe that reached the node (docs/protocol.md §2.9)",
)
async def confirm_reachability(
    body: ReachabilityConfirm, ctx: Ctx, node_id: NodeCaller
) -> ReachabilityResult:
    return await ctx.registry.reachability.confirm(node_id, body.nonce)


@v1.delete(
    "/nodes/{node_id:node_id}",
    status_code=204,
    responses=documented_errors(401, 403, 404),
    tags=["nodes"],
    summary="Graceful deregistration: the node goes 'stopped', its sessions close",
)
async def deregister(ctx: Ctx, node_id: NodeCaller) -> Response:
    await ctx.registry.deregister(node_id)
    return Response(status_code=204)


@v1.get("/nodes", response_model=NodeList, responses=documented_errors(401), tags=["clients"])
async def list_nodes(ctx: Ctx, client: ClientCaller) -> NodeList:
    return await ctx.registry.list_for_clients()


@v1.get("/relays", response_model=RelayList, responses=documented_errors(401), tags=["clients"])
async def list_relays(ctx: Ctx, client: ClientCaller) -> RelayList:
    """The live relay hosts a client times before asking for a route (protocol §5.5)."""
    return RelayList(relays=await ctx.sessions.udp_leases.targets(utcnow()))


# --- routes and sessions ---------------------------------------------------------------------


@v1.post(
    "/routes",
    response_model=RouteResponse,
    status_code=201,
    responses=documented_errors(401, 403, 404, 409, 503, body=True),
    tags=["clients"],
    summary="Pick a node, open a session, return the WireGuard config and both paths",
)
async def create_route(body: RouteRequest, ctx: Ctx, client: ClientWithinQuota) -> RouteResponse:
    return await ctx.sessions.create_route(client, body)


@v1.get(
    "/sessions/{session_id:session_id}",
    response_model=SessionInfo,
    responses=documented_errors(401, 404),
    tags=["clients"],
)
async def get_session(ctx: Ctx, client: ClientCaller, session_id: SessionIdPath) -> SessionInfo:
    return await ctx.sessions.get(client, session_id)


@v1.get(
    "/sessions/{session_id:session_id}/punch",
    response_model=PunchAnswer,
    responses=documented_errors(401, 404),
    tags=["clients"],
    summary="The public addresses the server observed for both ends, and a hole-punch offer",
)
async def punch_session(ctx: Ctx, client: ClientCaller, session_id: SessionIdPath) -> PunchAnswer:
    if ctx.punch is None:
        return PunchAnswer(
            client_public=None, node_public=None, offer=None, why="hole punching is off"
        )
    return await ctx.punch.answer(client.id, session_id)


@v1.post(
    "/sessions/{session_id:session_id}/renew",
    response_model=SessionInfo,
    responses=documented_errors(401, 404, 409),
    tags=["clients"],
)
async def renew_session(ctx: Ctx, client: ClientCaller, session_id: SessionIdPath) -> SessionInfo:
    return await ctx.sessions.renew(client, session_id)


@v1.delete(
    "/sessions/{session_id:session_id}",
    response_model=SessionInfo,
    responses=documented_errors(401, 404),
    tags=["clients"],
    summary="Close the session (idempotent: a closed session stays closed)",
)
async def close_session(ctx: Ctx, client: ClientCaller, session_id: SessionIdPath) -> SessionInfo:
    return await ctx.sessions.close(client, session_id)


# --- admin -----------------------------------------------------------------------------------


@v1.get(
    "/admin/nodes", response_model=AdminNodeList, responses=documented_errors(401), tags=["admin"]
)
async def admin_nodes(ctx: Ctx, _admin: AdminCaller) -> AdminNodeList:
    return await ctx.registry.list_admin()


@v1.get(
    "/admin/sessions",
    response_model=AdminSessionList,
    responses=documented_errors(401),
    tags=["admin"],
)
async def admin_sessions(
    ctx: Ctx,
    _admin: AdminCaller,
    state: Annotated[Literal["open", "closed"] | None, Query()] = None,
) -> AdminSessionList:
    return await ctx.sessions.list_admin(state)


@v1.get(
    "/admin/clients",
    response_model=AdminClientList,
    responses=documented_errors(401),
    tags=["admin"],
)
async def admin_clients(ctx: Ctx, _admin: AdminCaller) -> AdminClientList:
    records = await ctx.identity.list_clients()
    month, usage = await ctx.usage.by_client() if ctx.usage else (None, {})
    return AdminClientList(
        clients=[
            AdminClient(
                name=r.name,
                created_at=r.created_at,
                revoked=r.revoked,
                revoked_at=r.revoked_at,
                open_sessions=r.open_sessions,
                month=month,
                rx_bytes=usage.get(r.name, (0, 0, None))[0],
                tx_bytes=usage.get(r.name, (0, 0, None))[1],
                quota_bytes=usage.get(r.name, (0, 0, None))[2],
            )
            for r in records
        ]
    )


@v1.put(
    "/admin/clients/{name}/quota",
    status_code=204,
    responses=documented_errors(401, 404, body=True),
    tags=["admin"],
    summary="Set a client's monthly quota (bytes both ways; null = unlimited)",
)
async def admin_set_quota(
    body: ClientQuotaRequest,
    ctx: Ctx,
    _admin: AdminCaller,
    name: Annotated[str, Path(pattern=CLIENT_NAME_PATTERN, description="client name")],
) -> Response:
    if ctx.usage is None:
        raise Unavailable("usage_off", "usage accounting is not running")
    await ctx.usage.set_quota(name, body.quota_bytes)
    return Response(status_code=204)


@v1.post(
    "/admin/clients",
    response_model=ClientCreated,
    status_code=201,
    responses=documented_errors(401, 409, body=True),
    tags=["admin"],
    summary="Create a client; the answer holds its token (shown once)",
)
async def admin_add_client(
    body: ClientCreateRequest, ctx: Ctx, _admin: AdminCaller
) -> ClientCreated:
    token = await ctx.identity.add_client(body.name)
    return ClientCreated(name=body.name, token=token)


@v1.delete(
    "/admin/clients/{name:client_name}",
    response_model=AdminClient,
    responses=documented_errors(401, 404),
    tags=["admin"],
    summary="Revoke a client: its token stops working and its sessions close",
)
async def admin_revoke_client(
    ctx: Ctx,
    _admin: AdminCaller,
    name: Annotated[str, Path(pattern=CLIENT_NAME_PATTERN, description="client name")],
) -> AdminClient:
    client_id = await ctx.identity.mark_revoked(name)
    await ctx.sessions.close_for_client(client_id, "client_revoked")
    (record,) = [r for r in await ctx.identity.list_clients() if r.name == name]
    return AdminClient(
        name=record.name,
        created_at=record.created_at,
        revoked=record.revoked,
        revoked_at=record.revoked_at,
        open_sessions=record.open_sessions,
    )


@v1.post(
    "/admin/enrollment-keys",
    response_model=EnrollmentKeyCreated,
    status_code=201,
    responses=documented_errors(401, body=True),
    tags=["admin"],
    summary="Create a node enrollment key (shown once)",
)
async def admin_enrollment_key(
    body: EnrollmentKeyRequest, ctx: Ctx, _admin: AdminCaller
) -> EnrollmentKeyCreated:
    expires_at = utcnow() + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    key = await ctx.identity.create_enrollment_key(body.uses, expires_at)
    return EnrollmentKeyCreated(key=key, uses_left=body.uses, expires_at=expires_at)


# --- probes ----------------------------------------------------------------------------------


@probes.get("/healthz", response_model=Health, tags=["probes"])
async def healthz() -> Health:
    return Health(status="ok")


@probes.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["probes"])
async def readyz(ctx: Ctx) -> Any:
    if await ctx.db.ping():
        return Health(status="ready", database="ok")
    return JSONResponse({"status": "not_ready", "database": "unreachable"}, status_code=503)


@probes.get("/metrics", response_class=PlainTextResponse, tags=["probes"])
async def metrics(ctx: Ctx) -> Response:
    if await ctx.db.ping():
        await ctx.registry.refresh_gauges()
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
