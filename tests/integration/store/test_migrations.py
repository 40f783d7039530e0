"""Schema through Alembic: fresh databases, databases of the pre-Alembic schema, operators'
``pusher db upgrade``, replicas starting at once; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from preservarium_pusher_api.core.contract import (
    CommandStatus,
    DevicePresence,
    Protocol,
    utc_now,
)
from preservarium_pusher_api.store import StatusStore, normalise_url
from preservarium_pusher_api.store.migrate import head_revision
from preservarium_pusher_api.store.schema import metadata
from tests.integration.store.legacy_schema import DEVICES, legacy

pytestmark = pytest.mark.integration


async def make_legacy_database(url: str, version: int) -> str:
    """A database as the service made it before Alembic, with one command of each kind."""
    engine = create_async_engine(normalise_url(url))
    request_id = str(uuid.uuid4())
    now = time.time()
    try:
        async with engine.begin() as conn:
            tables = [t for t in legacy.sorted_tables if version >= 2 or t is not DEVICES]
            await conn.run_sync(lambda sync: legacy.create_all(sync, tables=tables))
            await conn.execute(
                text("INSERT INTO pusher_schema (id, version) VALUES (1, :v)"), {"v": version}
            )
            await conn.execute(
                text(
                    "INSERT INTO pusher_commands (request_id, device_id, protocol, command_type,"
                    " status, status_rank, detail, created_at, updated_at, sent_at)"
                    " VALUES (:rid, 'pico-1', 'mqtt', 'control_led', 'failed', 3, 'jammed',"
                    " :t, :t2, :t1)"
                ),
                {"rid": request_id, "t": now, "t1": now + 1, "t2": now + 2},
            )
            await conn.execute(
                text(
                    "INSERT INTO pusher_command_history (request_id, status, at, source, detail)"
                    " VALUES (:rid, 'sent', :t1, 'connector-mqtt-a', ''),"
                    " (:rid, 'failed', :t2, 'connector-mqtt-a', 'jammed')"
                ),
                {"rid": request_id, "t1": now + 1, "t2": now + 2},
            )
            await conn.execute(
                text(
                    "INSERT INTO pusher_idempotency (scope, key, request_hash, state,"
                    " status_code, response, created_at)"
                    " VALUES ('-', 'key-1', 'hash', 'done', 202, :body, :t)"
                ),
                {"body": '{"request_id": "' + request_id + '"}', "t": now},
            )
    finally:
        await engine.dispose()
    return request_id


def tables_and_revision(conn: Connection) -> tuple[set[str], str | None]:
    names = set(inspect(conn).get_table_names())
    return names, MigrationContext.configure(conn).get_current_revision()


def schema_drift(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


@pytest.mark.parametrize("legacy_version", [1, 2])
async def test_pre_alembic_database_is_adopted_and_keeps_its_rows(
    store_url: str, legacy_version: int
) -> None:
    """A store made by the previous schema ends at head with every row readable."""
    request_id = await make_legacy_database(store_url, legacy_version)
    store = StatusStore(store_url)
    await store.start()
    try:
        record = await store.get(request_id)
        assert record is not None
        assert (record.status, record.detail) == (CommandStatus.FAILED, "jammed")
        assert [entry.status for entry in record.history] == ["queued", "sent", "failed"]
        claim = await store.idempotency_keys.claim("-", "key-1", "hash", 86400, 60, "rid-new")
        assert (claim.owner, claim.status_code) == (False, 202)
        await store.devices.apply_presence(
            [
                DevicePresence(
                    device_id="pico-1",
                    protocol=Protocol.MQTT,
                    online=True,
                    last_seen=utc_now(),
                    source="connector-mqtt-a",
                )
            ]
        )
        device = await store.devices.get("pico-1")
        assert device is not None and device.online is True
        async with store.engine.connect() as conn:
            names, revision = await conn.run_sync(tables_and_revision)
            assert await conn.run_sync(schema_drift) == []
        assert revision == head_revision()
        assert "pusher_schema" not in names
    finally:
        await store.stop()


async def test_fresh_database_ends_at_head_and_matches_the_schema(store_url: str) -> None:
    """Migrations build exactly the tables the code describes; starting again changes nothing."""
    for _ in range(2):
        store = StatusStore(store_url)
        await store.start()
        await store.stop()
    store = StatusStore(store_url)
    try:
        async with store.engine.connect() as conn:
            names, revision = await conn.run_sync(tables_and_revision)
            drift = await conn.run_sync(schema_drift)
        assert revision == head_revision()
        assert {"pusher_commands", "pusher_command_history", "pusher_devices"} <= names
        assert drift == []
    finally:
        await store.stop()


async def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    """Four API instances starting at once on PostgreSQL: all start, the schema is at head."""
    stores = [StatusStore(postgres_url) for _ in range(4)]
    try:
        await asyncio.gather(*(store.start() for store in stores))
        async with stores[0].engine.connect() as conn:
            _names, revision = await conn.run_sync(tables_and_revision)
        assert revision == head_revision()
    finally:
        await asyncio.gather(*(store.stop() for store in stores))


def test_pusher_db_upgrade_migrates_before_deploying(tmp_path: Path) -> None:
    """Operators run ``pusher db upgrade`` against STATUS_STORE_URL; it names the revision."""
    url = f"sqlite:///{tmp_path}/status.db"
    env = {**os.environ, "STATUS_STORE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "pusher_cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"status store at revision {head_revision()}"
    assert (tmp_path / "status.db").exists()
