"""The error root every part of the service raises on purpose.

Errors are wire-neutral: they say what went wrong and whether trying again may help,
never how a protocol answers it. The API maps its own subclasses to HTTP in one place
(``preservarium_pusher_api.api.errors``); connectors map theirs to status events.

::

    PusherError                 retriable = False unless a subclass says otherwise
    ├── ConfigurationError      started with settings it cannot run with
    ├── (API) KafkaUnavailableError, CommandNotFoundError, ...   preservarium_pusher_api.exceptions
    └── (connectors) ConnectorError, TransportUnavailable, ...   connectors.errors
"""

from __future__ import annotations

from typing import Any


class PusherError(Exception):
    """Root of every error the service raises on purpose.

    Attributes:
        retriable: whether the same request may succeed if sent again later.
        retry_after: seconds a caller should wait before retrying, when known.
        details: structured items describing what was wrong (field locations, limits).
    """

    retriable = False

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
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
    """The process was started with settings it cannot run with."""
