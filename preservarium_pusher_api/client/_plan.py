"""Every API call as data: a generator yields requests and sleeps, a driver does the I/O.

The async and the sync client share this plan, so retries, Idempotency-Keys, long-poll
budgets and error mapping are written once; each client only performs the yielded steps.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from preservarium_pusher_api.client._errors import (
    CommandNotFound,
    CommandRejected,
    PusherClientError,
    RateLimited,
    ResultTimeout,
    ServiceUnavailable,
    Unauthorized,
)
from preservarium_pusher_api.models import (
    BatchCommandResponse,
    CancelResponse,
    CommandListResponse,
    CommandResponse,
    CommandStatusResponse,
    DeviceListResponse,
    DeviceResponse,
)

log = logging.getLogger("preservarium_pusher_api.client")

DEFAULT_URL = "http://localhost:8000"
MAX_LONG_POLL_SECONDS = 60.0
_MAX_BACKOFF_SECONDS = 30.0
ModelT = TypeVar("ModelT", bound=BaseModel)
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Generator[Request | Sleep, httpx.Response | None, Any]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _error_from(response: httpx.Response) -> PusherClientError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("error") or response.reason_phrase or f"HTTP {response.status_code}")
    options: dict[str, Any] = {
        "status_code": response.status_code,
        "error_type": body.get("type"),
        "details": body.get("details") if isinstance(body.get("details"), list) else [],
        "retry_after": _retry_after(response),
        "http_request_id": body.get("request_id") or response.headers.get("X-Request-ID"),
    }
    code = response.status_code
    if code in (401, 403):
        return Unauthorized(message, **options)
    if code == 429:
        return RateLimited(message, **options)
    if code == 404 and body.get("type") == "CommandNotFoundError":
        return CommandNotFound(message, **options)
    if 400 <= code < 500:
        return CommandRejected(message, **options)
    return ServiceUnavailable(message, **options)


def _in_progress(response: httpx.Response) -> bool:
    """A retry arrived while the first attempt with the same Idempotency-Key still runs."""
    if response.status_code != 409:
        return False
    try:
        return bool(response.json().get("type") == "IdempotencyKeyInProgressError")
    except (ValueError, AttributeError):
        return False


def _command_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    body = {key: value for key, value in fields.items() if value is not None}
    body.setdefault("payload", {})
    return body


class Operations:
    """Every API call as a generator of requests/sleeps; drivers do the I/O."""

    def __init__(self, retries: int, backoff: float, timeout: float) -> None:
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout

    def request_options(self, step: Request) -> dict[str, Any]:
        """httpx ``request`` arguments; a long-poll gets its wait on top of the timeout."""
        wait = float(step.params.get("wait", 0)) if step.params else 0.0
        return {
            "method": step.method,
            "url": step.path,
            "params": step.params,
            "json": step.json,
            "headers": step.headers,
            "timeout": self.timeout + wait,
        }

    def _delay(self, attempt: int, hinted: float | None) -> float:
        if hinted is not None:
            return min(hinted, _MAX_BACKOFF_SECONDS)
        ceiling = min(_MAX_BACKOFF_SECONDS, self.backoff * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security

    def exchange(self, request: Request) -> Step:
        """One call with retries on 503/429/connection failures; returns the response."""
        attempt = 0
        while True:
            response = yield request
            failure: PusherClientError
            if response is None:  # the connection failed; nothing was answered
                failure = ServiceUnavailable(f"cannot reach the pusher API ({request.path})")
                hinted = None
            elif response.status_code in (429, 503) or _in_progress(response):
                failure = _error_from(response)
                hinted = failure.retry_after
            elif response.is_success:
                return response
            else:
                raise _error_from(response)
            if attempt >= self.retries:
                raise failure
            delay = self._delay(attempt, hinted)
            log.info("pusher API busy or unreachable; retrying in %.2f s", delay)
            attempt += 1
            yield Sleep(delay)

    def call(self, model: type[ModelT], request: Request) -> Generator[Any, Any, ModelT]:
        response = yield from self.exchange(request)
        return model.model_validate(response.json())

    def send_command(
        self,
        device_id: str,
        command_type: str,
        protocol: str,
        payload: Mapping[str, Any] | None,
        idempotency_key: str | None,
        fields: Mapping[str, Any],
    ) -> Generator[Any, Any, CommandResponse]:
        body = _command_body(
            {
                "device_id": device_id,
                "command_type": command_type,
                "protocol": protocol,
                "payload": dict(payload or {}),
                **fields,
            }
        )
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        request = Request("POST", "/api/v1/commands", json=body, headers=headers)
        return (yield from self.call(CommandResponse, request))

    def push_command(self, fields: dict[str, Any]) -> Generator[Any, Any, bool]:
        """The original module's call: True only when the command was accepted."""
        try:
            response = yield from self.send_command(
                fields.pop("device_id", None),
                fields.pop("command_type", None),
                fields.pop("protocol", None),
                fields.pop("payload", None),
                fields.pop("idempotency_key", None),
                fields,
            )
        except PusherClientError as exc:
            log.warning("command not accepted: %s", exc.message)
            return False
        return response.success

    def push_commands_batch(
        self, commands: Iterable[Mapping[str, Any] | BaseModel], idempotency_key: str | None
    ) -> Generator[Any, Any, BatchCommandResponse]:
        items = [
            c.model_dump(mode="json", exclude_none=True) if isinstance(c, BaseModel) else c
            for c in commands
        ]
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        body = {"commands": [_command_body(item) for item in items]}
        request = Request("POST", "/api/v1/commands/batch", json=body, headers=headers)
        return (yield from self.call(BatchCommandResponse, request))

    def get_status(
        self, request_id: str, wait: float = 0, last_status: str | None = None
    ) -> Generator[Any, Any, CommandStatusResponse]:
        params: dict[str, Any] = {}
        if wait:
            params["wait"] = min(wait, MAX_LONG_POLL_SECONDS)
        if last_status:
            params["last_status"] = str(last_status)
        path = f"/api/v1/commands/{quote(request_id, safe='')}/status"
        return (yield from self.call(CommandStatusResponse, Request("GET", path, params)))

    def wait_for_result(
        self, request_id: str, timeout: float
    ) -> Generator[Any, Any, CommandStatusResponse]:
        deadline = time.monotonic() + timeout
        status = yield from self.get_status(request_id)
        while not status.status.is_terminal:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(
                    f"command {request_id} is still {status.status.value} after {timeout:g} s",
                    status,
                )
            status = yield from self.get_status(
                request_id, wait=max(0.1, remaining), last_status=status.status.value
            )
        return status

    def list_commands(
        self,
        device_id: str | None,
        status: str | None,
        since: str | None,
        limit: int,
        cursor: str | None,
    ) -> Generator[Any, Any, CommandListResponse]:
        params = {
            key: value
            for key, value in {
                "device_id": device_id,
                "status": str(status) if status else None,
                "since": since,
                "limit": limit,
                "cursor": cursor,
            }.items()
            if value is not None
        }
        return (
            yield from self.call(CommandListResponse, Request("GET", "/api/v1/commands", params))
        )

    def cancel(self, request_id: str) -> Generator[Any, Any, CancelResponse]:
        path = f"/api/v1/commands/{quote(request_id, safe='')}"
        return (yield from self.call(CancelResponse, Request("DELETE", path)))

    def devices(self) -> Generator[Any, Any, DeviceListResponse]:
        return (yield from self.call(DeviceListResponse, Request("GET", "/api/v1/devices")))

    def device(self, device_id: str) -> Generator[Any, Any, DeviceResponse]:
        path = f"/api/v1/devices/{quote(device_id, safe='')}"
        return (yield from self.call(DeviceResponse, Request("GET", path)))


def default_headers(api_key: str | None, api_key_header: str) -> dict[str, str]:
    headers = {"User-Agent": "preservarium-pusher-client", "Accept": "application/json"}
    if api_key:
        headers[api_key_header] = api_key
    return headers
