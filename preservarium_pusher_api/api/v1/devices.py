"""Device routes: presence (online, last seen) and pending commands per device."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from preservarium_pusher_api.api.dependencies import StatusDep
from preservarium_pusher_api.api.v1.commands import _ERRORS, API_PREFIX
from preservarium_pusher_api.core.exceptions import PusherError
from preservarium_pusher_api.core.models import DeviceListResponse, DeviceResponse, ErrorResponse
from preservarium_pusher_api.services.devices import DeviceDirectory, DeviceState


class DeviceNotFoundError(PusherError):
    """No connector ever heard from the device and no command was sent to it."""

    status_code = 404


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
    states = await DeviceDirectory(status.store).list(limit)
    return DeviceListResponse(items=[_response(state) for state in states])


async def get_device(
    device_id: Annotated[str, Path(max_length=128)],
    status: StatusDep,
) -> DeviceResponse:
    """One device's presence and pending commands."""
    state = await DeviceDirectory(status.store).get(device_id)
    if state is None:
        raise DeviceNotFoundError(f"no device {device_id!r} is known")
    return _response(state)


def build_router() -> APIRouter:
    """Device routes."""
    router = APIRouter(tags=["devices"])
    errors: dict[int | str, dict[str, Any]] = {code: _ERRORS[code] for code in (401, 429)}
    router.add_api_route(
        f"{API_PREFIX}/devices",
        list_devices,
        methods=["GET"],
        response_model=DeviceListResponse,
        responses=errors,
        summary="Devices: presence and pending commands",
    )
    router.add_api_route(
        f"{API_PREFIX}/devices/{{device_id}}",
        get_device,
        methods=["GET"],
        response_model=DeviceResponse,
        responses={**errors, 404: {"model": ErrorResponse, "description": "Unknown device"}},
        summary="One device: online, last seen, pending commands",
    )
    return router
