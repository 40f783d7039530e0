"""The status store as the service first shipped it: commands, history, devices, idempotency.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pusher_commands",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("protocol", sa.String(8)),
        sa.Column("command_type", sa.String(128)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_rank", sa.SmallInteger, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("result", sa.JSON),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("timeout_seconds", sa.Float),
        sa.Column("sent_at", sa.Float),
    )
    op.create_index("ix_pusher_commands_created", "pusher_commands", ["created_at", "request_id"])
    op.create_index(
        "ix_pusher_commands_device", "pusher_commands", ["device_id", "created_at", "request_id"]
    )
    op.create_index(
        "ix_pusher_commands_status", "pusher_commands", ["status", "created_at", "request_id"]
    )
    op.create_index("ix_pusher_commands_expiry", "pusher_commands", ["status_rank", "expires_at"])
    op.create_index("ix_pusher_commands_deadline", "pusher_commands", ["status_rank", "sent_at"])

    op.create_table(
        "pusher_command_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("detail", sa.String(500), nullable=False, server_default=""),
        sa.UniqueConstraint(
            "request_id", "status", "source", "detail", name="uq_pusher_history_event"
        ),
    )
    op.create_index("ix_pusher_history_request", "pusher_command_history", ["request_id", "at"])

    op.create_table(
        "pusher_devices",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("protocol", sa.String(8)),
        sa.Column("online", sa.Boolean),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("changed_at", sa.Float),
        sa.Column("source", sa.String(128)),
        sa.Column("detail", sa.Text),
    )

    op.create_table(
        "pusher_idempotency",
        sa.Column("scope", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("response", sa.JSON),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_pusher_idempotency_created", "pusher_idempotency", ["created_at"])


def downgrade() -> None:
    op.drop_table("pusher_idempotency")
    op.drop_table("pusher_devices")
    op.drop_table("pusher_command_history")
    op.drop_table("pusher_commands")
