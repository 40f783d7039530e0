"""Alembic environment: runs on the connection the service hands over (see ``migrate``)."""

from __future__ import annotations

from alembic import context

from preservarium_pusher_api.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "status store migrations run through the service: pusher db upgrade "
        "(or preservarium_pusher_api.store.migrate.upgrade)"
    )
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
