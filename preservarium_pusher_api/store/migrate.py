"""Schema migrations of the status store, through Alembic.

The revisions live in ``migrations/versions`` inside the package, so an installed service
can migrate its own database: at start-up (``StatusStore.start``) and with
``pusher db upgrade`` for operators who migrate before deploying. On PostgreSQL the
upgrade runs under a transaction-scoped advisory lock, so of several replicas starting
at once one migrates and the others wait, then find nothing to do.

A database made before Alembic carries the service's own ``pusher_schema`` version table
(versions 1 and 2). It is adopted: what version 1 lacked is created, the database is
stamped with revision ``0001`` (the same schema) and the old version table is dropped.
"""

from __future__ import annotations

import asyncio
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from preservarium_pusher_api.core.errors import ConfigurationError
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.store.schema import devices

log = get_logger(__name__)

MIGRATIONS: Final = "preservarium_pusher_api.store:migrations"
ADVISORY_LOCK_ID: Final = 7135391
LEGACY_VERSION_TABLE: Final = "pusher_schema"
LEGACY_LAST_VERSION: Final = 2
ADOPTED_REVISION: Final = "0001"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged revisions, bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision this version of the service knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_connection(connection: Connection, revision: str = "head") -> str | None:
    """Adopt a pre-Alembic database if needed, upgrade to ``revision``; returns where it is.

    Raises:
        ConfigurationError: the database was written by a newer version of the service.
    """
    _adopt_legacy(connection)
    current = current_revision(connection)
    if current is not None and not _known(current):
        raise ConfigurationError(
            f"status store is at schema revision {current}, newer than this version of the "
            "service knows; upgrade the service"
        )
    command.upgrade(alembic_config(connection), revision)
    reached = current_revision(connection)
    if reached != current:
        log.info("status store schema migrated", revision_from=current, revision_to=reached)
    return reached


def _known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def _adopt_legacy(connection: Connection) -> None:
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables or LEGACY_VERSION_TABLE not in tables:
        return
    version = connection.execute(text("SELECT version FROM pusher_schema")).scalar()
    if version is not None and version > LEGACY_LAST_VERSION:
        raise ConfigurationError(
            f"status store schema version {version} is newer than this service; upgrade the service"
        )
    # Version 1 lacked only the devices table; revision 0001 has it as version 2 made it.
    devices.create(connection, checkfirst=True)
    command.stamp(alembic_config(connection), ADOPTED_REVISION)
    connection.execute(text("DROP TABLE pusher_schema"))
    log.info("status store adopted into Alembic", legacy_version=version)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str | None:
    """Upgrade the store's schema in one transaction; returns the revision reached.

    Raises:
        ConfigurationError: the database was written by a newer version of the service.
    """
    postgres = engine.dialect.name == "postgresql"
    attempts = 6
    for attempt in range(attempts):
        try:
            async with engine.begin() as conn:
                if postgres:
                    # Several instances may start at once: one migrates, the others wait.
                    await conn.execute(text(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_ID})"))
                return await conn.run_sync(upgrade_connection, revision)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            # SQLite has no advisory lock: two processes creating the tables at once make
            # one of them fail; by the next attempt the other has finished.
            if attempt == attempts - 1:
                raise
            log.info("status store schema race, retrying", error=type(exc).__name__)
            await asyncio.sleep(0.2 * (attempt + 1))  # the other process finishes meanwhile
    return None
