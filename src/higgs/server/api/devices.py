"""The /v1 device endpoints (issue 18; docs/protocol.md §2.6): the account's own, and the
operator's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from higgs.protocol.devices import (
    DEVICE_ID_PATTERN,
    DEVICE_NAME_PATTERN,
    AdminDevice,
    AdminDeviceList,
    DeviceCreated,
    DeviceCreateRequest,
    DeviceInfo,
    DeviceList,
)
from higgs.server.api.deps import AdminCaller, ClientCaller, ClientWithinQuota, Ctx, rate_limit
from higgs.server.api.errors import documented_errors
from higgs.server.services.devices import DeviceService
from higgs.server.services.errors import Unavailable

__all__ = ["devices"]

devices = APIRouter(prefix="/v1", dependencies=[Depends(rate_limit)])

DeviceNamePath = Annotated[str, Path(pattern=DEVICE_NAME_PATTERN, description="device name")]
DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="d_<16 hex>")]


def _service(ctx: Ctx) -> DeviceService:
    if ctx.devices is None:
        raise Unavailable("devices_off", "this server does not keep devices")
    return ctx.devices


@devices.post(
    "/devices",
    response_model=DeviceCreated,
    status_code=201,
    responses=documented_errors(401, 403, 404, 409, 503, body=True),
    tags=["clients"],
    summary="Create a device: a named peer that lasts until revoked (config for stock apps)",
)
async def create_device(
    body: DeviceCreateRequest, ctx: Ctx, client: ClientWithinQuota
) -> DeviceCreated:
    # A used-up quota refuses new devices as it refuses routes (ClientWithinQuota).
    return await _service(ctx).create(client, body)


@devices.get(
    "/devices", response_model=DeviceList, responses=documented_errors(401), tags=["clients"]
)
async def list_devices(ctx: Ctx, client: ClientCaller) -> DeviceList:
    return await _service(ctx).list(client)


@devices.delete(
    "/devices/{name}",
    response_model=DeviceInfo,
    responses=documented_errors(401, 404),
    tags=["clients"],
    summary="Revoke the device: the node drops its peer at once",
)
async def revoke_device(ctx: Ctx, client: ClientCaller, name: DeviceNamePath) -> DeviceInfo:
    return await _service(ctx).revoke(client, name)


@devices.get(
    "/admin/devices",
    response_model=AdminDeviceList,
    responses=documented_errors(401),
    tags=["admin"],
)
async def admin_list_devices(
    ctx: Ctx,
    _admin: AdminCaller,
    revoked: Annotated[bool, Query(description="also the revoked ones")] = False,
) -> AdminDeviceList:
    return await _service(ctx).list_admin(revoked)


@devices.delete(
    "/admin/devices/{device_id}",
    response_model=AdminDevice,
    responses=documented_errors(401, 404),
    tags=["admin"],
    summary="Revoke any account's device",
)
async def admin_revoke_device(
    ctx: Ctx, _admin: AdminCaller, device_id: DeviceIdPath
) -> AdminDevice:
    return await _service(ctx).revoke_admin(device_id)
