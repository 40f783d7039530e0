"""Status routes: a command's status (with long-poll), the audit list, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from slowapi import Limiter
from starlette.requests import Request

from preservarium_pusher_api.api.dependencies import PusherDep, SettingsDep, StatusDep
from preservarium_pusher_api.api.v1.commands import _ERRORS, API_PREFIX, Endpoint
from preservarium_pusher_api.contract import CommandStatus, check_identifier
from preservarium_pusher_api.core.exceptions import (
    CommandNotCancellableError,
    CommandNotFoundError,
    PusherError,
)
from preservarium_pusher_api.core.models import (
    CancelResponse,
    CommandListResponse,
    CommandStatusResponse,
    CommandSummary,
    ErrorResponse,
    HistoryItem,
)
from preservarium_pusher_api.services.status_store import (
    CommandRecord,
    InvalidCursorError,
    from_epoch,
    to_epoch,
)

MAX_WAIT_SECONDS = 60
MAX_PAGE = 500
_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

RequestId = Annotated[str, Path(pattern=_UUID, description="The command's request_id (a UUID).")]


class InvalidQueryError(PusherError):
    """A query parameter that is well typed but not acceptable (e.g. a foreign cursor)."""

    status_code = 422


def _summary_fields(record: CommandRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "device_id": record.device_id,
        "protocol": record.protocol,
        "command_type": record.command_type,
        "status": record.status,
        "detail": record.detail,
        "result": record.result,
        "created_at": from_epoch(record.created_at),
        "updated_at": from_epoch(record.updated_at),
        "expires_at": from_epoch(record.expires_at),
    }


def status_response(record: CommandRecord) -> CommandStatusResponse:
    """The API shape of a stored command with its history."""
    return CommandStatusResponse(
        **_summary_fields(record),
        history=[
            HistoryItem(
                status=entry.status,
                at=from_epoch(entry.at),
                source=entry.source,
                detail=entry.detail,
            )
            for entry in record.history
        ],
    )


async def get_command_status(
    request_id: RequestId,
    status: StatusDep,
    settings: SettingsDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="Long-poll: answer as soon as the status differs from `last_status` "
            "(or is terminal), at the latest after this many seconds.",
        ),
    ] = 0,
    last_status: Annotated[
        CommandStatus | None,
        Query(description="The status the caller already knows; defaults to the current one."),
    ] = None,
) -> CommandStatusResponse:
    """The command's current status and its history."""
    request_id = request_id.lower()
    record = await status.read(request_id)
    if record is None:
        raise CommandNotFoundError(f"no command with request_id {request_id}")
    seen = last_status or record.status
    if wait > 0 and record.status == seen and not record.status.is_terminal:
        latest = await status.notifier.wait_for_change(
            status.read, request_id, seen, wait, settings.long_poll_recheck_seconds
        )
        record = latest or record
    return status_response(record)


async def _list(
    status: StatusDep,
    device_id: str | None,
    state: CommandStatus | None,
    since: datetime | None,
    limit: int,
    cursor: str | None,
) -> CommandListResponse:
    if device_id is not None:
        try:
            check_identifier(device_id)
        except ValueError as exc:
            raise InvalidQueryError(
                f"device_id {exc}", details=[{"loc": ["query", "device_id"]}]
            ) from exc
    await status.writer.flush()  # commands this instance just accepted are listed too
    try:
        page = await status.store.list(
            device_id=device_id,
            status=state,
            since=to_epoch(since) if since else None,
            limit=limit,
            cursor=cursor,
        )
    except InvalidCursorError as exc:
        raise InvalidQueryError(
            "cursor is not valid; pass next_cursor from a previous page",
            details=[{"loc": ["query", "cursor"]}],
        ) from exc
    return CommandListResponse(
        items=[CommandSummary(**_summary_fields(record)) for record in page.items],
        next_cursor=page.next_cursor,
    )


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size (at most 500).")]
Since = Annotated[datetime | None, Query(description="Only commands created at or after this.")]
Cursor = Annotated[
    str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
]
StatusFilter = Annotated[CommandStatus | None, Query(alias="status")]


async def list_commands(
    status: StatusDep,
    device_id: Annotated[str | None, Query(max_length=128)] = None,
    state: StatusFilter = None,
    since: Since = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> CommandListResponse:
    """Commands, newest first, with keyset pagination."""
    return await _list(status, device_id, state, since, limit, cursor)


async def list_device_commands(
    device_id: Annotated[str, Path(max_length=128)],
    status: StatusDep,
    state: StatusFilter = None,
    since: Since = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> CommandListResponse:
    """The commands of one device, newest first."""
    return await _list(status, device_id, state, since, limit, cursor)


async def cancel_command(
    request: Request,
    request_id: RequestId,
    status: StatusDep,
    pusher: PusherDep,
) -> CancelResponse:
    """Cancel a command that is still queued (not yet sent to the device)."""
    request_id = request_id.lower()
    record = await status.read(request_id)
    if record is None:
        raise CommandNotFoundError(f"no command with request_id {request_id}")
    if record.status != CommandStatus.QUEUED:
        raise CommandNotCancellableError(
            f"command is {record.status.value}; only queued commands can be cancelled",
            details=[{"request_id": request_id, "status": record.status.value}],
        )
    await pusher.push_cancel(request_id, record.device_id, record.protocol)
    await status.store.add_note(request_id, CommandStatus.QUEUED, "cancel requested")
    status.notifier.notify([request_id])
    return CancelResponse(
        request_id=request_id,
        status=record.status,
        message="Cancel requested; the status becomes cancelled when the connector drops "
        "the command, or the history records that it came too late.",
    )


def build_router(limiter: Limiter, rate_limit: str | None) -> APIRouter:
    """Status routes; cancel is rate limited like submissions."""
    router = APIRouter(tags=["status"])

    def limited(endpoint: Endpoint) -> Endpoint:
        return limiter.limit(rate_limit)(endpoint) if rate_limit else endpoint

    errors: dict[int | str, dict[str, Any]] = {code: _ERRORS[code] for code in (401, 429)}
    not_found: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorResponse, "description": "Unknown request_id"}
    }
    router.add_api_route(
        f"{API_PREFIX}/commands/{{request_id}}/status",
        get_command_status,
        methods=["GET"],
        response_model=CommandStatusResponse,
        responses={**errors, **not_found},
        summary="Status and history of one command (long-poll with ?wait=)",
    )
    router.add_api_route(
        f"{API_PREFIX}/commands",
        list_commands,
        methods=["GET"],
        response_model=CommandListResponse,
        responses=errors,
        summary="List commands, newest first",
    )
    router.add_api_route(
        f"{API_PREFIX}/devices/{{device_id}}/commands",
        list_device_commands,
        methods=["GET"],
        response_model=CommandListResponse,
        responses=errors,
        summary="List one device's commands, newest first",
    )
    router.add_api_route(
        f"{API_PREFIX}/commands/{{request_id}}",
        limited(cancel_command),
        methods=["DELETE"],
        status_code=202,
        response_model=CancelResponse,
        responses={
            **errors,
            **not_found,
            409: {"model": ErrorResponse, "description": "Already sent or finished"},
            503: _ERRORS[503],
        },
        summary="Cancel a queued command",
    )
    return router
