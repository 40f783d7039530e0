"""What every route module shares: the API prefix, the error-response docs, rate limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from preservarium_pusher_api.models import ErrorResponse

API_PREFIX: Final = "/api/v1"

Endpoint = Callable[..., Awaitable[Any]]
# Wraps an endpoint in the configured rate limit (or returns it unchanged).
RateLimited = Callable[[Endpoint], Endpoint]

_ERROR_TEXTS: Final = {
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
