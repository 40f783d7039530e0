"""Command routes: validate, hand to the pusher service, answer."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from slowapi import Limiter

from preservarium_pusher_api.api.dependencies import (
    PusherDep,
    SettingsDep,
    get_status,
    idempotency_scope,
)
from preservarium_pusher_api.core.config import Settings
from preservarium_pusher_api.core.exceptions import PusherError
from preservarium_pusher_api.core.models import (
    BatchCommandRequest,
    BatchCommandResponse,
    CommandRequest,
    CommandResponse,
    ErrorResponse,
)
from preservarium_pusher_api.services.idempotency import (
    IDEMPOTENCY_KEY_PATTERN,
    StoredAnswer,
    request_fingerprint,
)

API_PREFIX = "/api/v1"
Endpoint = Callable[..., Awaitable[Any]]

# W3C trace context: version-traceid-parentid-flags, forwarded only when well formed.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "Missing or invalid API key",
        413: "Payload or request body too large",
        422: "Invalid command",
        409: "Idempotency-Key reused with a different request, or still in progress",
        429: "Rate limit exceeded (see Retry-After)",
        503: "Kafka unavailable; nothing was accepted (see Retry-After)",
    }.items()
}


class BatchTooLargeError(PusherError):
    """The batch holds more commands than ``MAX_BATCH_SIZE``."""

    status_code = 422


def status_location(request_id: str) -> str:
    """Where the command's status can be read."""
    return f"/api/v1/commands/{request_id}/status"


def _traceparent(value: str | None) -> str | None:
    return value if value and _TRACEPARENT.match(value) else None


IdempotencyKey = Annotated[
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


async def _idempotent(
    request: Request,
    settings: Settings,
    key: str,
    body: Any,
    submit: Callable[[], Awaitable[tuple[int, Any]]],
) -> StoredAnswer:
    status = await get_status(request)
    return await status.idempotency.run(
        idempotency_scope(request, settings),
        key,
        request_fingerprint(request.url.path, body),
        submit,
    )


async def create_command(
    request: Request,
    command: CommandRequest,
    response: Response,
    pusher: PusherDep,
    settings: SettingsDep,
    traceparent: Annotated[str | None, Header(include_in_schema=False)] = None,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Validate a command and produce it to Kafka; 202 once the broker acknowledged it."""
    trace = _traceparent(traceparent)
    if idempotency_key is None:
        result = await pusher.push_command(command, trace)
        response.headers["Location"] = status_location(result.request_id)
        return result

    async def submit() -> tuple[int, Any]:
        accepted = await pusher.push_command(command, trace)
        return 202, accepted.model_dump(mode="json")

    answer = await _idempotent(
        request, settings, idempotency_key, command.model_dump(mode="json"), submit
    )
    headers = {"Idempotent-Replayed": str(answer.replayed).lower()}
    if isinstance(answer.body, dict) and "request_id" in answer.body:
        headers["Location"] = status_location(answer.body["request_id"])
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)


async def create_commands_batch(
    request: Request,
    batch: BatchCommandRequest,
    pusher: PusherDep,
    settings: SettingsDep,
    traceparent: Annotated[str | None, Header(include_in_schema=False)] = None,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Produce every command, then await all acknowledgements; failures are per item."""
    if len(batch.commands) > settings.max_batch_size:
        raise BatchTooLargeError(
            f"batch holds {len(batch.commands)} commands; MAX_BATCH_SIZE is "
            f"{settings.max_batch_size}",
            details=[{"loc": ["body", "commands"], "max_items": settings.max_batch_size}],
        )
    trace = _traceparent(traceparent)
    if idempotency_key is None:
        return await pusher.push_commands_batch(batch.commands, trace)

    async def submit() -> tuple[int, Any]:
        answer = await pusher.push_commands_batch(batch.commands, trace)
        return 202, answer.model_dump(mode="json")

    stored = await _idempotent(
        request, settings, idempotency_key, batch.model_dump(mode="json"), submit
    )
    return JSONResponse(
        stored.body,
        status_code=stored.status_code,
        headers={"Idempotent-Replayed": str(stored.replayed).lower()},
    )


def build_router(limiter: Limiter, rate_limit: str | None) -> APIRouter:
    """Command routes, rate limited per API key (or client address) when a limit is set.

    Built per app because the limit is a setting and slowapi applies it by decoration.
    """
    router = APIRouter(tags=["commands"])

    def limited(endpoint: Endpoint) -> Endpoint:
        return limiter.limit(rate_limit)(endpoint) if rate_limit else endpoint

    router.add_api_route(
        f"{API_PREFIX}/commands",
        limited(create_command),
        methods=["POST"],
        status_code=202,
        response_model=CommandResponse,
        responses=_ERRORS,
        summary="Submit one command",
    )
    router.add_api_route(
        f"{API_PREFIX}/commands/batch",
        limited(create_commands_batch),
        methods=["POST"],
        status_code=202,
        response_model=BatchCommandResponse,
        responses=_ERRORS,
        summary="Submit several commands",
    )
    return router
