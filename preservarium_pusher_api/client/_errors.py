"""The client's errors: what the server said, typed by what the caller should do.

::

    PusherClientError
    ├── CommandRejected        4xx: do not resend as it is
    │   └── CommandNotFound    404 for a request_id
    ├── Unauthorized           401/403
    ├── RateLimited            429 after the retries
    ├── ServiceUnavailable     503 or no connection after the retries
    └── ResultTimeout          wait_for_result ran out of time (also a TimeoutError)
"""

from __future__ import annotations

from typing import Any

from preservarium_pusher_api.models import CommandStatusResponse


class PusherClientError(Exception):
    """Root of the client's errors; carries what the server said."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        details: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
        http_request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.details = details or []
        self.retry_after = retry_after
        self.http_request_id = http_request_id


class CommandRejected(PusherClientError):
    """The server refused the request as it is (400/404/409/413/422); do not resend it."""


class CommandNotFound(CommandRejected):
    """No command with that request_id (404)."""


class Unauthorized(PusherClientError):
    """The API key is missing or not accepted (401/403)."""


class RateLimited(PusherClientError):
    """Still rate limited (429) after the retries; ``retry_after`` says when to come back."""


class ServiceUnavailable(PusherClientError):
    """The API or its Kafka could not be reached after the retries (503, connection)."""


class ResultTimeout(PusherClientError, TimeoutError):
    """``wait_for_result`` ran out of time before the command ended; ``status`` is the last."""

    def __init__(self, message: str, status: CommandStatusResponse) -> None:
        super().__init__(message)
        self.status = status
