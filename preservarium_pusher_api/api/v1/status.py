"""Command status routes: one command's status (with long-poll), the audit list, cancel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from preservarium_pusher_api.api.common import (
    DeviceIdPath,
    DeviceIdQuery,
    RateLimited,
    device_id_checked,
    error_docs,
)
from preservarium_pusher_api.api.dependencies import CommandsDep, SettingsDep, caller_scope
from preservarium_pusher_api.core.contract import CommandStatus
from preservarium_pusher_api.exceptions import InvalidQueryError
from preservarium_pusher_api.models import (
    CancelResponse,
    CommandListResponse,
    CommandStatusResponse,
    CommandSummary,
    HistoryItem,
)
from preservarium_pusher_api.store import CommandRecord, from_epoch, to_epoch
from preservarium_pusher_api.store.records import CURSOR_MAX_LENGTH, CURSOR_PATTERN

MAX_WAIT_SECONDS = 60
MAX_PAGE = 500
_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

RequestId = Annotated[str, Path(pattern=_UUID, description="The command's request_id (a UUID).")]


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
    request: Request,
    request_id: RequestId,
    commands: CommandsDep,
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
    record = await commands.read(
        request_id.lower(), wait, last_status, caller_scope(request, settings)
    )
    return status_response(record)


async def _list(
    commands: CommandsDep,
    device_id: str | None,
    state: CommandStatus | None,
    since_text: str | None,
    limit: int,
    cursor: str | None,
) -> CommandListResponse:
    since = parse_since(since_text)
    if device_id is not None:
        device_id_checked(device_id, "query")
    page = await commands.list(
        device_id=device_id,
        state=state,
        since=to_epoch(since) if since else None,
        limit=limit,
        cursor=cursor,
    )
    return CommandListResponse(
        items=[CommandSummary(**_summary_fields(record)) for record in page.items],
        next_cursor=page.next_cursor,
    )


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size (at most 500).")]
Since = Annotated[
    str | None,
    Query(
        max_length=64,
        json_schema_extra={"format": "date-time"},
        description="Only commands created at or after this (RFC 3339, e.g. "
        "`2026-01-31T12:00:00Z`).",
    ),
]


def parse_since(value: str | None) -> datetime | None:
    """An RFC 3339 time (a missing offset is read as UTC); numbers and words are refused."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().upper().replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or "T" not in value.upper():
        raise InvalidQueryError(
            "since must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z",
            details=[{"loc": ["query", "since"]}],
        )
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


Cursor = Annotated[
    str | None,
    Query(
        max_length=CURSOR_MAX_LENGTH,
        json_schema_extra={"pattern": CURSOR_PATTERN},
        description="`next_cursor` of the previous page.",
    ),
]
StatusFilter = Annotated[CommandStatus | None, Query(alias="status")]


async def list_commands(
    commands: CommandsDep,
    device_id: DeviceIdQuery = None,
    state: StatusFilter = None,
    since: Since = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> CommandListResponse:
    """Commands, newest first, with keyset pagination."""
    return await _list(commands, device_id, state, since, limit, cursor)


async def list_device_commands(
    device_id: DeviceIdPath,
    commands: CommandsDep,
    state: StatusFilter = None,
    since: Since = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> CommandListResponse:
    """The commands of one device, newest first."""
    return await _list(commands, device_id, state, since, limit, cursor)


async def cancel_command(
    request: Request,  # read by the rate limiter
    request_id: RequestId,
    commands: CommandsDep,
) -> CancelResponse:
    """Cancel a command that is still queued (not yet sent to the device)."""
    return await commands.cancel(request_id.lower())


def build_router(limited: RateLimited) -> APIRouter:
    """Command status routes; cancel is rate limited like submissions."""
    router = APIRouter(tags=["status"])
    router.add_api_route(
        "/commands/{request_id}/status",
        get_command_status,
        methods=["GET"],
        response_model=CommandStatusResponse,
        responses=error_docs(
            401, 404, 429, e404="Unknown request_id", e429="Too many long-polls of this API key"
        ),
        summary="Status and history of one command (long-poll with ?wait=)",
    )
    router.add_api_route(
        "/commands",
        list_commands,
        methods=["GET"],
        response_model=CommandListResponse,
        responses=error_docs(401, 422, 429),
        summary="List commands, newest first",
    )
    router.add_api_route(
        "/devices/{device_id}/commands",
        list_device_commands,
        methods=["GET"],
        response_model=CommandListResponse,
        responses=error_docs(401, 422, 429),
        summary="List one device's commands, newest first",
    )
    router.add_api_route(
        "/commands/{request_id}",
        limited(cancel_command),
        methods=["DELETE"],
        status_code=202,
        response_model=CancelResponse,
        responses=error_docs(
            401, 404, 409, 429, 503, e404="Unknown request_id", e409="Already sent or finished"
        ),
        summary="Cancel a queued command",
    )
    return router
