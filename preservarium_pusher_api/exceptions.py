"""The API's errors, below the shared root; ``api/errors.py`` maps each to its HTTP answer.

::

    PusherError (core)
    ├── ConfigurationError (core)
    ├── KafkaUnavailableError        retriable: Kafka did not acknowledge, nothing accepted
    ├── CommandRejectedError         Kafka refused the record for good
    ├── PayloadTooLargeError / RequestBodyTooLargeError
    ├── BatchTooLargeError / InvalidQueryError
    ├── AuthenticationError
    ├── CommandNotFoundError / DeviceNotFoundError
    ├── CommandNotCancellableError
    ├── IdempotencyKeyConflictError / IdempotencyKeyInProgressError (retriable)
    ├── TooManyLongPollsError / TooManyStreamsError (retriable)
    └── StatusStoreUnavailableError  retriable
"""

from __future__ import annotations

import asyncio
from typing import Any

from preservarium_pusher_api.core.errors import ConfigurationError, PusherError

__all__ = [
    "AuthenticationError",
    "BatchTooLargeError",
    "CommandNotCancellableError",
    "CommandNotFoundError",
    "CommandRejectedError",
    "ConfigurationError",
    "DeviceNotFoundError",
    "IdempotencyKeyConflictError",
    "IdempotencyKeyInProgressError",
    "InvalidQueryError",
    "KafkaUnavailableError",
    "PayloadTooLargeError",
    "PusherError",
    "RequestBodyTooLargeError",
    "StatusStoreUnavailableError",
    "TooManyStreamsError",
]


class KafkaUnavailableError(PusherError):
    """Kafka did not acknowledge in time or cannot be reached; nothing was accepted."""

    retriable = True


class OutcomeUnknownError(KafkaUnavailableError):
    """Kafka did not acknowledge in time, but the record was handed to the producer: it may
    still land. ``outcome`` resolves to the answer once Kafka acknowledges (or raises the
    error once it refuses). Answered like KafkaUnavailableError (503, Retry-After)."""

    def __init__(self, message: str, outcome: asyncio.Future[Any], retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.outcome = outcome

    @property
    def error_type(self) -> str:
        """Clients see the same type as for any unavailable Kafka."""
        return KafkaUnavailableError.__name__


class CommandRejectedError(PusherError):
    """Kafka refused a record for a reason sending it again will not fix."""


class PayloadTooLargeError(PusherError):
    """A command's serialized payload is larger than ``MAX_PAYLOAD_BYTES``."""


class RequestBodyTooLargeError(PusherError):
    """The request body is larger than ``MAX_BODY_BYTES``."""


class BatchTooLargeError(PusherError):
    """The batch holds more commands than ``MAX_BATCH_SIZE``."""


class InvalidQueryError(PusherError):
    """A query parameter that is well typed but not acceptable (e.g. a foreign cursor)."""


class AuthenticationError(PusherError):
    """No API key, or one that is not accepted."""


class CommandNotFoundError(PusherError):
    """No command with this request id is known."""


class DeviceNotFoundError(PusherError):
    """No connector ever heard from the device and no command was sent to it."""


class CommandNotCancellableError(PusherError):
    """The command left ``queued`` already; cancelling would race the device."""


class IdempotencyKeyConflictError(PusherError):
    """The Idempotency-Key was used before with a different request."""


class IdempotencyKeyInProgressError(PusherError):
    """Another request with the same Idempotency-Key is still being processed."""

    retriable = True


class TooManyLongPollsError(PusherError):
    """The caller already holds ``MAX_LONG_POLLS_PER_KEY`` long-polls."""

    retriable = True


class TooManyStreamsError(PusherError):
    """The caller already holds ``EVENTS_MAX_STREAMS_PER_KEY`` event streams."""

    retriable = True


class StatusStoreUnavailableError(PusherError):
    """The status store is switched off or cannot be reached."""

    retriable = True
