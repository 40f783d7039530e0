"""Command submission routes: translate HTTP to the command service and back."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from preservarium_pusher_api.api.common import RateLimited, error_docs, status_location
from preservarium_pusher_api.api.dependencies import CommandsDep, SettingsDep, caller_scope
from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.models import (
    BatchCommandRequest,
    BatchCommandResponse,
    CommandRequest,
    CommandResponse,
)
from preservarium_pusher_api.services.commands import CommandService, IdempotencyKey
from preservarium_pusher_api.services.idempotency import IDEMPOTENCY_KEY_PATTERN, StoredAnswer

# W3C trace context: version-traceid-parentid-flags, forwarded only when well formed.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN.pattern,
        description=(
            "Repeat the same request with the same key (within 24 h) to get the original "
            "answer back instead of a second command; a different body with the key is 409."
        ),
    ),
]
TraceparentHeader = Annotated[str | None, Header(include_in_schema=False)]


def _traceparent(value: str | None) -> str | None:
    return value if value and _TRACEPARENT.match(value) else None


def _idempotency(request: Request, settings: Settings, key: str | None) -> IdempotencyKey | None:
    return IdempotencyKey(caller_scope(request, settings), key) if key else None


def _stored(answer: StoredAnswer) -> JSONResponse:
    headers = {"Idempotent-Replayed": str(answer.replayed).lower()}
    if isinstance(answer.body, dict) and answer.body.get("request_id"):
        headers["Location"] = status_location(answer.body["request_id"])
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)


async def create_command(
    request: Request,
    command: CommandRequest,
    response: Response,
    traceparent: TraceparentHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Any:
    """Validate a command and produce it to Kafka; 202 once the broker acknowledged it."""
    # The app's services straight from its state: the hottest route solves no dependencies.
    state = request.app.state
    commands: CommandService = state.commands
    settings: Settings = state.settings
    answer = await commands.submit(
        command, _traceparent(traceparent), _idempotency(request, settings, idempotency_key)
    )
    if isinstance(answer, StoredAnswer):
        return _stored(answer)
    response.headers["Location"] = status_location(answer.request_id)
    return answer


async def create_commands_batch(
    request: Request,
    batch: BatchCommandRequest,
    commands: CommandsDep,
    settings: SettingsDep,
    traceparent: TraceparentHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Any:
    """Produce every command, then await all acknowledgements; failures are per item."""
    answer = await commands.submit_batch(
        batch, _traceparent(traceparent), _idempotency(request, settings, idempotency_key)
    )
    if isinstance(answer, StoredAnswer):
        return _stored(answer)
    return answer


def build_router(limited: RateLimited) -> APIRouter:
    """Command submission routes, rate limited when a limit is configured."""
    router = APIRouter(tags=["commands"])
    errors = error_docs(400, 401, 409, 413, 422, 429, 503)
    router.add_api_route(
        "/commands",
        limited(create_command),
        methods=["POST"],
        status_code=202,
        response_model=CommandResponse,
        responses=errors,
        summary="Submit one command",
    )
    router.add_api_route(
        "/commands/batch",
        limited(create_commands_batch),
        methods=["POST"],
        status_code=202,
        response_model=BatchCommandResponse,
        responses=errors,
        summary="Submit several commands",
    )
    # "batch" is no request_id: DELETE here is a method this path lacks, not a bad cancel.
    router.add_api_route(
        "/commands/batch", _not_allowed, methods=["DELETE"], include_in_schema=False
    )
    return router


async def _not_allowed() -> None:
    raise StarletteHTTPException(status_code=405, detail="Method Not Allowed")
