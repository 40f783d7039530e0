"""The status store: what became of every command and device, on SQLite or PostgreSQL.

``schema`` holds the tables, ``migrate`` their Alembic revisions, ``records`` the plain
records and the one row mapping, ``store`` the lifecycle-aware writes and reads,
``idempotency`` the Idempotency-Key claims and ``devices`` presence. Import from here.
"""

from preservarium_pusher_api.store.devices import DeviceDirectory, DeviceState
from preservarium_pusher_api.store.idempotency import IdempotencyKeys
from preservarium_pusher_api.store.records import (
    API_SOURCE,
    SWEEPER_SOURCE,
    Claim,
    CommandRecord,
    HistoryEntry,
    InvalidCursorError,
    Page,
    QueuedCommand,
    Transition,
    decode_cursor,
    encode_cursor,
    from_epoch,
    queued_from_message,
    record_from_row,
    record_of_queued,
    to_epoch,
)
from preservarium_pusher_api.store.store import STORE_ERRORS, StatusStore, normalise_url

__all__ = [
    "API_SOURCE",
    "STORE_ERRORS",
    "SWEEPER_SOURCE",
    "Claim",
    "CommandRecord",
    "DeviceDirectory",
    "DeviceState",
    "HistoryEntry",
    "IdempotencyKeys",
    "InvalidCursorError",
    "Page",
    "QueuedCommand",
    "StatusStore",
    "Transition",
    "decode_cursor",
    "encode_cursor",
    "from_epoch",
    "normalise_url",
    "queued_from_message",
    "record_from_row",
    "record_of_queued",
    "to_epoch",
]
