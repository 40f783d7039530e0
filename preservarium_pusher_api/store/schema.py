"""The status store's tables (SQLAlchemy Core), the schema Alembic revisions build.

Times are epoch seconds (float) so that deadline arithmetic and keyset pagination are the
same SQL on SQLite and PostgreSQL. A change here goes with a new revision under
``migrations/versions``; a test compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from preservarium_pusher_api.core.contract import DETAIL_MAX_CHARS

metadata = MetaData()

commands = Table(
    "pusher_commands",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("device_id", String(128), nullable=False),
    Column("protocol", String(8)),
    Column("command_type", String(128)),
    Column("status", String(16), nullable=False),
    Column("status_rank", SmallInteger, nullable=False),
    Column("detail", Text),
    Column("result", JSON),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("timeout_seconds", Float),
    Column("sent_at", Float),
    Index("ix_pusher_commands_created", "created_at", "request_id"),
    Index("ix_pusher_commands_device", "device_id", "created_at", "request_id"),
    Index("ix_pusher_commands_status", "status", "created_at", "request_id"),
    Index("ix_pusher_commands_expiry", "status_rank", "expires_at"),
    Index("ix_pusher_commands_deadline", "status_rank", "sent_at"),
)

history = Table(
    "pusher_command_history",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("request_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("source", String(128), nullable=False),
    Column("detail", String(DETAIL_MAX_CHARS), nullable=False, server_default=""),
    # The same event delivered twice (at-least-once) is one history entry.
    UniqueConstraint("request_id", "status", "source", "detail", name="uq_pusher_history_event"),
    Index("ix_pusher_history_request", "request_id", "at"),
)

devices = Table(
    "pusher_devices",
    metadata,
    Column("device_id", String(128), primary_key=True),
    Column("protocol", String(8)),
    Column("online", Boolean),
    Column("last_seen", Float, nullable=False),
    Column("changed_at", Float),
    Column("source", String(128)),
    Column("detail", Text),
)

idempotency = Table(
    "pusher_idempotency",
    metadata,
    Column("scope", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(8), nullable=False),  # "pending" | "done"
    # Bound when the key is first claimed; every attempt under the key produces with it.
    Column("request_id", String(64)),
    Column("status_code", Integer),
    Column("response", JSON),
    Column("created_at", Float, nullable=False),
    Index("ix_pusher_idempotency_created", "created_at"),
)

# How far the trackers have read the results topic: per partition, the last time the
# partition had nothing left unread. The sweeper decides deadlines only up to the oldest of
# these, so an unread event always wins over a deadline (``StatusStore.sweep``).
tracker_progress = Table(
    "pusher_tracker_progress",
    metadata,
    Column("topic", String(255), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("caught_up_at", Float, nullable=False),
)
