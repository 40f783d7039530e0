"""What every route module shares: the API prefix, the error-response docs, rate limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final

from fastapi import Path, Query

from preservarium_pusher_api.core.contract import (
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    check_identifier,
)
from preservarium_pusher_api.exceptions import InvalidQueryError
from preservarium_pusher_api.models import ErrorResponse

API_PREFIX: Final = "/api/v1"

Endpoint = Callable[..., Awaitable[Any]]
# Wraps an endpoint in the configured rate limit (or returns it unchanged).
RateLimited = Callable[[Endpoint], Endpoint]

# A device id in a path or query: the identifier rules, stated in the OpenAPI document (the
# pattern is published, and checked by ``device_id_checked`` with the same expression).
_DEVICE_ID_RULES: Final[dict[str, Any]] = {
    "min_length": 1,
    "max_length": IDENTIFIER_MAX_LENGTH,
    "json_schema_extra": {"pattern": IDENTIFIER_PATTERN},
    "description": "A device id: 1-128 characters, no '/', '+', '#', whitespace or control "
    "characters.",
}
DeviceIdPath = Annotated[str, Path(**_DEVICE_ID_RULES)]
DeviceIdQuery = Annotated[str | None, Query(**_DEVICE_ID_RULES)]


def device_id_checked(device_id: str, where: str) -> str:
    """``device_id`` under the identifier rules, else 422 naming ``where`` (path/query)."""
    try:
        return check_identifier(device_id)
    except ValueError as exc:
        raise InvalidQueryError(
            f"device_id {exc}", details=[{"loc": [where, "device_id"]}]
        ) from exc


_ERROR_TEXTS: Final = {
    400: "The body could not be read (not UTF-8, or cut short)",
    401: "Missing or invalid API key",
    404: "Unknown request_id or device",
    409: "Conflict: Idempotency-Key reused with a different request or still in progress, "
    "or the command is past cancelling",
    413: "Payload or request body too large",
    422: "Invalid request",
    429: "Rate limit exceeded (see Retry-After)",
    503: "Kafka or the status store unavailable; nothing was accepted (see Retry-After)",
}


def error_docs(*codes: int, **texts: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these status codes, all in the one error shape.

    ``texts`` override a description, keyed ``e404="..."``.
    """
    return {
        code: {"model": ErrorResponse, "description": texts.get(f"e{code}", _ERROR_TEXTS[code])}
        for code in codes
    }


def status_location(request_id: str) -> str:
    """Where a command's status can be read."""
    return f"{API_PREFIX}/commands/{request_id}/status"
