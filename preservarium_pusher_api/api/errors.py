"""The one place that maps exceptions to HTTP answers, all in the ``ErrorResponse`` shape."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from slowapi.errors import RateLimitExceeded
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from preservarium_pusher_api.core.errors import ConfigurationError, PusherError
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.exceptions import (
    AuthenticationError,
    BatchTooLargeError,
    CommandNotCancellableError,
    CommandNotFoundError,
    CommandRejectedError,
    DeviceNotFoundError,
    IdempotencyKeyConflictError,
    IdempotencyKeyInProgressError,
    InvalidQueryError,
    KafkaUnavailableError,
    PayloadTooLargeError,
    RequestBodyTooLargeError,
    StatusStoreUnavailableError,
    TooManyLongPollsError,
    TooManyStreamsError,
)
from preservarium_pusher_api.store import STORE_ERRORS

log = get_logger(__name__)

# The HTTP status of each error the service raises on purpose; a subclass answers like
# its nearest listed ancestor, anything unlisted is a 500.
HTTP_STATUS: Final[dict[type[PusherError], int]] = {
    AuthenticationError: 401,
    CommandNotFoundError: 404,
    DeviceNotFoundError: 404,
    CommandNotCancellableError: 409,
    IdempotencyKeyConflictError: 409,
    IdempotencyKeyInProgressError: 409,
    PayloadTooLargeError: 413,
    RequestBodyTooLargeError: 413,
    BatchTooLargeError: 422,
    InvalidQueryError: 422,
    CommandRejectedError: 502,
    TooManyLongPollsError: 429,
    TooManyStreamsError: 429,
    KafkaUnavailableError: 503,
    StatusStoreUnavailableError: 503,
    ConfigurationError: 500,
}


def http_status(error: PusherError) -> int:
    """The HTTP status an error is answered with (its class or nearest listed ancestor)."""
    for cls in type(error).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


_HTTP_ERROR_TYPES = {
    401: "AuthenticationError",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestBodyTooLargeError",
    415: "UnsupportedMediaType",
}


def request_id_of(request: Request) -> str | None:
    """The X-Request-ID the request-context middleware assigned."""
    return getattr(request.state, "request_id", None)


def error_response(
    request: Request,
    status_code: int,
    error: str,
    error_type: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Build an error answer in the shared JSON shape."""
    body = {
        "error": error,
        "type": error_type,
        "details": details or [],
        "request_id": request_id_of(request),
    }
    return JSONResponse(body, status_code=status_code, headers=headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # "input" and "ctx" are left out: they would echo payload values back.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    fields = ", ".join(".".join(str(part) for part in d["loc"][1:]) or "body" for d in details)
    return error_response(request, 422, f"Invalid request: {fields}", "ValidationError", details)


async def _on_pusher_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PusherError)
    headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else None
    return error_response(
        request, http_status(exc), exc.message, exc.error_type, exc.details, headers
    )


def allowed_methods(request: Request) -> str:
    """Every method the documented routes of this path accept (a path served by several
    routes, e.g. GET and POST /commands, lists them all)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        match, child = route.matches(request.scope)
        if match is not Match.NONE and _params_fit(route, child.get("path_params", {})):
            methods |= route.methods or set()
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def _params_fit(route: APIRoute, params: dict[str, Any]) -> bool:
    # "/commands/batch" is not "/commands/{request_id}": a request_id is a UUID.
    for param in route.dependant.path_params:
        pattern = next(
            (
                getattr(m, "pattern", None)
                for m in param.field_info.metadata
                if hasattr(m, "pattern")
            ),
            None,
        )
        if pattern and not re.match(pattern, str(params.get(param.name, ""))):
            return False
    return True


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = _HTTP_ERROR_TYPES.get(exc.status_code, HTTPStatus(exc.status_code).phrase)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return error_response(request, exc.status_code, str(exc.detail), error_type, headers=headers)


async def _on_rate_limited(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimitExceeded)
    retry_after = 1
    view_limit = getattr(request.state, "view_rate_limit", None)
    if view_limit is not None:
        item, keys = view_limit
        reset_at, _remaining = request.app.state.limiter.limiter.get_window_stats(item, *keys)
        retry_after = max(1, math.ceil(reset_at - time.time()))
    return error_response(
        request,
        429,
        f"Rate limit exceeded: {exc.detail}",
        "RateLimitExceeded",
        headers={"Retry-After": str(retry_after)},
    )


async def _on_store_error(request: Request, exc: Exception) -> JSONResponse:
    # The type only: SQLAlchemy messages carry statement parameters (results, details).
    log.warning("status store unavailable", error_type=type(exc).__name__)
    return error_response(
        request,
        503,
        "The status store is unavailable; try again later",
        "StatusStoreUnavailableError",
        headers={"Retry-After": "1"},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", error_type=type(exc).__name__)
    return error_response(request, 500, "Internal server error", "InternalError")


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(PusherError, _on_pusher_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RateLimitExceeded, _on_rate_limited)
    for error in STORE_ERRORS:
        app.add_exception_handler(error, _on_store_error)
    app.add_exception_handler(Exception, _on_unexpected)
