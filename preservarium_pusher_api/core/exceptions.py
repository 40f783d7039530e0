"""One exception tree for the service; the API maps it to HTTP in ``api/errors.py``."""

from __future__ import annotations

from typing import Any


class PusherError(Exception):
    """Root of every error the service raises on purpose.

    Attributes:
        status_code: HTTP status the API answers with.
        retriable: whether the same request may succeed if sent again later.
        retry_after: seconds a client should wait before retrying, when known.
        details: structured items for the ``details`` list of the JSON error body.
    """

    status_code = 500
    retriable = False

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.retry_after = retry_after

    @property
    def error_type(self) -> str:
        """Stable machine-readable name of the error (the class name)."""
        return type(self).__name__


class ConfigurationError(PusherError):
    """The service was started with settings it cannot run with."""


class KafkaUnavailableError(PusherError):
    """Kafka did not acknowledge in time or cannot be reached; nothing was accepted."""

    status_code = 503
    retriable = True


class CommandRejectedError(PusherError):
    """Kafka refused a record for a reason sending it again will not fix."""

    status_code = 502


class PayloadTooLargeError(PusherError):
    """A command's serialized payload is larger than ``MAX_PAYLOAD_BYTES``."""

    status_code = 413


class RequestBodyTooLargeError(PusherError):
    """The request body is larger than ``MAX_BODY_BYTES``."""

    status_code = 413


class AuthenticationError(PusherError):
    """No API key, or one that is not accepted."""

    status_code = 401


class CommandNotFoundError(PusherError):
    """No command with this request id is known."""

    status_code = 404


class CommandNotCancellableError(PusherError):
    """The command left ``queued`` already; cancelling would race the device."""

    status_code = 409


class IdempotencyKeyConflictError(PusherError):
    """The Idempotency-Key was used before with a different request."""

    status_code = 409


class IdempotencyKeyInProgressError(PusherError):
    """Another request with the same Idempotency-Key is still being processed."""

    status_code = 409
    retriable = True


class StatusStoreUnavailableError(PusherError):
    """The status store is switched off or cannot be reached."""

    status_code = 503
    retriable = True
