"""The trackers' reading progress, per results partition, for the deadline sweeper.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pusher_tracker_progress",
        sa.Column("topic", sa.String(255), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("caught_up_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pusher_tracker_progress")
