"""Device routes: presence (online, last seen) and pending commands per device."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from preservarium_pusher_api.api.common import DeviceIdPath, device_id_checked, error_docs
from preservarium_pusher_api.api.dependencies import StatusDep
from preservarium_pusher_api.exceptions import DeviceNotFoundError
from preservarium_pusher_api.models import DeviceListResponse, DeviceResponse
from preservarium_pusher_api.store import DeviceState


def _response(state: DeviceState) -> DeviceResponse:
    return DeviceResponse(
        device_id=state.device_id,
        protocol=state.protocol,
        online=state.online,
        last_seen=state.last_seen,
        pending_commands=state.pending_commands,
        detail=state.detail,
    )


async def list_devices(
    status: StatusDep,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> DeviceListResponse:
    """Every device heard from or with pending commands."""
    states = await status.store.devices.list(limit)
    return DeviceListResponse(items=[_response(state) for state in states])


async def get_device(
    device_id: DeviceIdPath,
    status: StatusDep,
) -> DeviceResponse:
    """One device's presence and pending commands."""
    state = await status.store.devices.get(device_id_checked(device_id, "path"))
    if state is None:
        raise DeviceNotFoundError(f"no device {device_id!r} is known")
    return _response(state)


def build_router() -> APIRouter:
    """Device routes."""
    router = APIRouter(tags=["devices"])
    router.add_api_route(
        "/devices",
        list_devices,
        methods=["GET"],
        response_model=DeviceListResponse,
        responses=error_docs(401, 429),
        summary="Devices: presence and pending commands",
    )
    router.add_api_route(
        "/devices/{device_id}",
        get_device,
        methods=["GET"],
        response_model=DeviceResponse,
        responses=error_docs(401, 404, 429, e404="Unknown device"),
        summary="One device: online, last seen, pending commands",
    )
    return router
