"""Plain records of the status store and the one mapping from a row to a record.

Routes, the tracker and the read-your-writes buffer all see commands as ``CommandRecord``;
this module is where rows become records (``record_from_row``) and where an accepted
command becomes a ``QueuedCommand`` and, before its row is written, a record.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from preservarium_pusher_api.core.contract import CommandMessage, CommandStatus

API_SOURCE: Final = "api"
SWEEPER_SOURCE: Final = "sweeper"


def to_epoch(value: datetime) -> float:
    """Epoch seconds of an aware (or UTC-naive) datetime."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    """Aware UTC datetime of epoch seconds (None stays None)."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True, slots=True)
class QueuedCommand:
    """What the API knows of a command when Kafka acknowledged it."""

    request_id: str
    device_id: str
    protocol: str
    command_type: str
    created_at: float
    expires_at: float | None
    timeout_seconds: float | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One accepted event in a command's history."""

    status: str
    at: float
    source: str
    detail: str | None


@dataclass(slots=True)
class CommandRecord:
    """A command's row, with its history when read one by one."""

    request_id: str
    device_id: str
    protocol: str | None
    command_type: str | None
    status: CommandStatus
    detail: str | None
    result: Any
    created_at: float
    updated_at: float
    expires_at: float | None
    timeout_seconds: float | None
    sent_at: float | None
    history: list[HistoryEntry] = field(default_factory=list)

    @property
    def version(self) -> str:
        """Changes whenever the status or the history changes (long-poll, ETag)."""
        return f"{self.status.value}.{len(self.history)}"


@dataclass(frozen=True, slots=True)
class Transition:
    """A status change the store applied (for metrics and long-poll wake-ups)."""

    request_id: str
    status: CommandStatus
    protocol: str | None
    created_at: float
    at: float
    # set on the sweeper's transitions (it publishes them as status events)
    device_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing and the cursor of the next one."""

    items: list[CommandRecord]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of claiming an idempotency key."""

    owner: bool
    request_hash: str
    state: str
    status_code: int | None = None
    response: Any = None
    # The request id bound to the key (the owner produces with it; None for old rows).
    request_id: str | None = None


class InvalidCursorError(ValueError):
    """A listing cursor that this store did not issue."""


# A cursor is the position after (created_at, request_id): the 64 bits of created_at in
# hex (exact, no rounding), a dot, the request id. Every string of this form is a position,
# so a cursor that matches the pattern published in the OpenAPI document is never refused.
CURSOR_PATTERN: Final = r"^[0-9a-f]{16}\.[0-9A-Za-z_-]{1,64}$"
CURSOR_MAX_LENGTH: Final = 16 + 1 + 64
_CURSOR = re.compile(CURSOR_PATTERN)


def encode_cursor(created_at: float, request_id: str) -> str:
    """Opaque cursor after (created_at, request_id)."""
    return f"{struct.pack('>d', created_at).hex()}.{request_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of :func:`encode_cursor`; a NaN time reads as the very beginning (an empty
    page follows).

    Raises:
        InvalidCursorError: not of the cursor's form.
    """
    if not _CURSOR.match(cursor):
        raise InvalidCursorError("cursor is not valid")
    bits, request_id = cursor.split(".", 1)
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    if math.isnan(value):
        value = -math.inf
    return value, request_id


def record_from_row(row: Any) -> CommandRecord:
    """The record of a ``pusher_commands`` row (history is filled in by the reader)."""
    return CommandRecord(
        request_id=row.request_id,
        device_id=row.device_id,
        protocol=row.protocol,
        command_type=row.command_type,
        status=CommandStatus(row.status),
        detail=row.detail,
        result=row.result,
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
        timeout_seconds=row.timeout_seconds,
        sent_at=row.sent_at,
    )


def queued_from_message(message: CommandMessage) -> QueuedCommand:
    """The store row of a command Kafka acknowledged."""
    return QueuedCommand(
        request_id=message.request_id,
        device_id=message.device_id,
        protocol=message.protocol.value,
        command_type=message.command_type,
        created_at=to_epoch(message.created_at),
        expires_at=to_epoch(message.expires_at) if message.expires_at else None,
        timeout_seconds=message.timeout_seconds,
    )


def record_of_queued(row: QueuedCommand) -> CommandRecord:
    """The record of a command that is queued and known only to this instance so far."""
    return CommandRecord(
        request_id=row.request_id,
        device_id=row.device_id,
        protocol=row.protocol,
        command_type=row.command_type,
        status=CommandStatus.QUEUED,
        detail=None,
        result=None,
        created_at=row.created_at,
        updated_at=row.created_at,
        expires_at=row.expires_at,
        timeout_seconds=row.timeout_seconds,
        sent_at=None,
        history=[HistoryEntry(CommandStatus.QUEUED.value, row.created_at, API_SOURCE, None)],
    )
