"""Read back what the API produced, straight from the broker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord


async def read_records(
    bootstrap: str, topic: str, count: int, timeout: float = 15.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Consume ``count`` records of ``topic`` from the beginning (fails if fewer arrive)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=200)
                for partition_records in batch.values():
                    records.extend(partition_records)
    except TimeoutError:
        raise AssertionError(f"expected {count} records on {topic}, got {len(records)}") from None
    finally:
        await consumer.stop()
    return records


async def count_records(bootstrap: str, topic: str, idle: float = 1.0) -> int:
    """Number of records in ``topic``: consume from the start until nothing arrives for ``idle``."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    total = 0
    try:
        while batch := await consumer.getmany(timeout_ms=int(idle * 1000)):
            total += sum(len(records) for records in batch.values())
    finally:
        await consumer.stop()
    return total


def headers_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    """Record headers as a str -> str dict."""
    return {name: value.decode() for name, value in record.headers}


def value_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """Record value decoded as JSON."""
    assert record.value is not None
    decoded: dict[str, Any] = json.loads(record.value)
    return decoded
