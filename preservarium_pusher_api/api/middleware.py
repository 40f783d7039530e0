"""Pure ASGI middleware: request context (id, access log, HTTP metrics) and body size limit."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.metrics import PusherMetrics

log = get_logger("preservarium_pusher_api.access")

REQUEST_ID_HEADER = "X-Request-ID"
# Honour a caller's id only if it is safe to log and echo: short, printable, no spaces.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContextMiddleware:
    """Assigns X-Request-ID, binds it to every log line, logs access and records HTTP metrics."""

    def __init__(self, app: ASGIApp, metrics: PusherMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # The labelled children, looked up once per (method, route, status): few and bounded.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = given if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status_code = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(http_request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._observe(scope, status_code, time.perf_counter() - started)

    def _observe(self, scope: Scope, status_code: int, elapsed: float) -> None:
        template = route_template(scope)
        method = scope["method"]
        counter = self._counters.get((method, template, status_code))
        if counter is None:
            counter = self.metrics.http_requests.labels(method, template, str(status_code))
            self._counters[(method, template, status_code)] = counter
        counter.inc()
        timer = self._timers.get((method, template))
        if timer is None:
            timer = self._timers[(method, template)] = self.metrics.http_duration.labels(
                method, template
            )
        timer.observe(elapsed)
        # Successful requests are at DEBUG: command routes log their own INFO line per
        # command, and a second line per request would double the logging cost.
        (log.info if status_code >= 400 else log.debug)(
            "http request",
            method=method,
            route=template,
            status=status_code,
            duration_ms=round(elapsed * 1000, 2),
        )


def route_template(scope: Scope) -> str:
    """The matched route's path template with its router prefix, e.g. ``/api/v1/commands``.

    A route included through a prefixed router knows only its own part (``/commands``);
    the prefix is the part of the request path before where the route's pattern matches.
    Paths that matched no route are ``unmatched`` (never the raw path: unbounded labels).
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not template:
        return "unmatched"
    pattern = getattr(route, "path_regex", None)
    path: str = scope.get("path", "")
    if pattern is None or pattern.match(path):
        return str(template)
    for index, char in enumerate(path):
        if char == "/" and index and pattern.match(path[index:]):
            return path[:index] + template
    return str(template)


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` once a streamed body passes the limit."""


class BodySizeLimitMiddleware:
    """Answers 413 once a request body exceeds ``max_bytes``, without buffering it first.

    A declared ``Content-Length`` over the limit is refused before reading anything; a
    chunked or under-declared body is counted chunk by chunk as the app reads it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(413, self._detail())
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self) -> str:
        return f"request body exceeds MAX_BODY_BYTES ({self.max_bytes} bytes)"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = json.dumps(
            {
                "error": self._detail(),
                "type": "RequestBodyTooLargeError",
                "details": [{"limit_bytes": self.max_bytes}],
                "request_id": scope.get("state", {}).get("request_id"),
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
