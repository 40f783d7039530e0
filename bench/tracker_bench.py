"""Tracker benchmark: status records per second from Kafka into the store, SQLite and PostgreSQL.

For N commands, the command records (each becomes a ``queued`` row) and two status events
each (``sent``, ``succeeded``) are produced to Kafka first, 3N records in all. The tracker
(``StatusTracker``, in this process, as ``pusher tracker`` runs it) is then started on a new
store and timed from the first row it writes until every command is ``succeeded``; the
consumer-group join is not counted. PostgreSQL: ``BENCH_POSTGRES_URL`` or
``TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``); a fresh
database ``pusher_bench`` is created there.

Writes its section into docs/benchmarks.md (between the tracker markers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from charts import save  # noqa: E402
from mqtt_bench import create_topics, write_section  # noqa: E402
from pusher_dev.embedded_kafka import EmbeddedKafka  # noqa: E402

from preservarium_pusher_api.config import Settings  # noqa: E402
from preservarium_pusher_api.core.contract import (  # noqa: E402
    CommandMessage,
    CommandStatus,
    StatusEvent,
    command_headers,
)
from preservarium_pusher_api.metrics import PusherMetrics  # noqa: E402
from preservarium_pusher_api.services.tracker import StatusTracker  # noqa: E402
from preservarium_pusher_api.store import StatusStore  # noqa: E402
from preservarium_pusher_api.store.schema import commands  # noqa: E402

START, END = "<!-- tracker-bench:start -->", "<!-- tracker-bench:end -->"
TARGET = 20_000


async def produce(settings: Settings, total: int, devices: int) -> None:
    """``total`` command records and a ``sent`` and a ``succeeded`` event for each."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=5, acks=1
    )
    await producer.start()
    try:
        now = datetime.now(UTC)
        pending = []
        for n in range(total):
            device = f"bench-dev-{n % devices}"
            message = CommandMessage(
                request_id=str(uuid.uuid4()),
                device_id=device,
                command_type="control_led",
                payload={"pin": 25, "state": True},
                protocol="mqtt",
                created_at=now,
                expires_at=now + timedelta(minutes=10),
                timeout_seconds=600,
            )
            pending.append(
                await producer.send(
                    settings.kafka_command_topic,
                    message.model_dump_json().encode(),
                    key=device.encode(),
                    headers=command_headers(message),
                )
            )
            for status, seconds in ((CommandStatus.SENT, 0.01), (CommandStatus.SUCCEEDED, 0.02)):
                event = StatusEvent(
                    request_id=message.request_id,
                    device_id=device,
                    status=status,
                    occurred_at=now + timedelta(seconds=seconds),
                    source="connector-mqtt-bench",
                    result={"led": "on"} if status == CommandStatus.SUCCEEDED else None,
                )
                pending.append(
                    await producer.send(
                        settings.kafka_result_topic,
                        event.model_dump_json().encode(),
                        key=device.encode(),
                    )
                )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def succeeded(store: StatusStore) -> int:
    async with store.engine.connect() as conn:
        query = select(func.count()).where(commands.c.status == CommandStatus.SUCCEEDED.value)
        return int((await conn.execute(query)).scalar_one())


async def any_row(store: StatusStore) -> bool:
    async with store.engine.connect() as conn:
        return (await conn.execute(select(commands.c.request_id).limit(1))).first() is not None


async def rate(kafka: str, store_url: str, total: int, devices: int) -> float:
    """Status records (commands + events) per second the tracker writes into ``store_url``."""
    suffix = uuid.uuid4().hex[:6]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap_servers=kafka,
        kafka_enable_idempotence=False,
        kafka_command_topic=f"trk-{suffix}",
        kafka_result_topic=f"trk-{suffix}-results",
        kafka_presence_topic=f"trk-{suffix}-presence",
        kafka_consumer_rebalance_timeout_ms=300,
        tracker_group_id=f"trk-{suffix}",
        status_store_url=store_url,
        log_level="WARNING",
    )
    await create_topics(settings)
    await produce(settings, total, devices)
    store = StatusStore(store_url)
    await store.start()
    tracker = StatusTracker(settings, store, PusherMetrics())
    await tracker.start()
    try:
        async with asyncio.timeout(300):
            while not await any_row(store):
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            while await succeeded(store) < total:
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
    finally:
        await tracker.stop()
        await store.stop()
    return 3 * total / elapsed


async def fresh_postgres() -> str:
    """A new, empty database ``pusher_bench`` on the configured PostgreSQL server."""
    base = os.environ.get("BENCH_POSTGRES_URL") or os.environ.get(
        "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    url = make_url(base)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(False)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute("DROP DATABASE IF EXISTS pusher_bench WITH (FORCE)")
        await conn.execute("CREATE DATABASE pusher_bench")
    finally:
        await conn.close()
    return url.set(database="pusher_bench").render_as_string(False)


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for name, label in (("sqlite", "SQLite (file, WAL)"), ("postgresql", "PostgreSQL 15")):
        value = results.get(name)
        if isinstance(value, float):
            verdict = "met" if value >= TARGET else "not met"
            rows.append(f"| {label} | {value:,.0f} | {value / TARGET:.2f}× | {verdict} |")
        else:
            rows.append(f"| {label} | not measured: {results.get(name + '_error')} | | |")
    table = "\n".join(rows)
    return f"""{START}
## Tracker — status records into the store, measured {when}

{args.total:,} commands for {args.devices} devices: each command record (→ `queued` row) and
two status events (`sent`, `succeeded`), {3 * args.total:,} records produced to Kafka first;
the tracker (consumer group, fetches of up to 500 records, one store transaction per
fetch: the queued rows in one statement, the events in three) is timed from its first
row until every command is `succeeded`. Reproduce with `make bench` (or
`.venv/bin/python bench/tracker_bench.py`).

| store | records/s | / target {TARGET:,} | target |
|---|---:|---:|---|
{table}
{END}
"""


async def measure(args: argparse.Namespace) -> str:
    results: dict[str, Any] = {}
    with EmbeddedKafka() as broker, tempfile.TemporaryDirectory() as work:
        sqlite_url = f"sqlite+aiosqlite:///{work}/status.db"
        results["sqlite"] = await rate(
            broker.bootstrap_servers, sqlite_url, args.total, args.devices
        )
        print(f"  sqlite: {results['sqlite']:,.0f}/s", file=sys.stderr)
        try:
            postgres_url = await fresh_postgres()
        except (OSError, asyncpg.PostgresError) as exc:
            results["postgresql_error"] = f"PostgreSQL not reachable ({type(exc).__name__})"
        else:
            results["postgresql"] = await rate(
                broker.bootstrap_servers, postgres_url, args.total, args.devices
            )
            print(f"  postgresql: {results['postgresql']:,.0f}/s", file=sys.stderr)
    save("tracker", results)
    return render(results, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total", type=int, default=15_000)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    section = asyncio.run(measure(args))
    write_section(args.output, START, END, section)
    print(section)


if __name__ == "__main__":
    main()
