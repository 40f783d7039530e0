"""The parking lot: commands waiting for an offline device, out of the consumer's way.

A command held for a device that is offline pins its partition's committed offset: the
partition cannot commit past it, and once enough records pile up behind it the partition
pauses — every other device hashed there stops. After ``CONNECTOR_PARK_AFTER_SECONDS`` of
waiting, the device's commands are parked instead: each is written to the parking topic
(``{commands topic}.parked.{protocol}``, compacted, keyed by request_id, in the partition of
the same number as the command's) and its commands offset is finished, so the commit moves
on. The command stays in its device's lane in memory and goes out in order when the
device is back; TTL and cancel apply as before. Once a parked command is done (sent and
reported, expired, cancelled, failed) a tombstone takes it out of the lot.

The next owner of the partition reads the lot back on assignment — before it takes any
other record of the partition — and puts the parked commands first in their lanes, so a
crash or a rebalance while a command is parked loses nothing and keeps each device's
order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from connectors.settings import ConnectorSettings
from connectors.topics import ensure_like_commands, reader
from preservarium_pusher_api.core.contract import CommandMessage
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)


class ParkingUnavailable(Exception):
    """The lot did not acknowledge the write."""


def parking_topic(settings: ConnectorSettings, protocol: str) -> str:
    """The parking topic of a protocol's connectors."""
    return settings.connector_parking_topic or f"{settings.kafka_command_topic}.parked.{protocol}"


class Parked:
    """One command read back from the lot."""

    __slots__ = ("command", "parked_at_ms", "traceparent")

    def __init__(self, command: CommandMessage, traceparent: str | None, parked_at_ms: int):
        self.command = command
        self.traceparent = traceparent
        self.parked_at_ms = parked_at_ms


class ParkingLot:
    """Parked commands per commands partition, durable in a compacted Kafka topic."""

    def __init__(self, settings: ConnectorSettings, protocol: str) -> None:
        self._settings = settings
        self.topic = parking_topic(settings, protocol)
        self._producer: AIOKafkaProducer | None = None

    async def start(self, producer: AIOKafkaProducer) -> None:
        """Use ``producer`` (acks=all) and make sure the topic exists."""
        await ensure_like_commands(self._settings, self.topic, compacted=True)
        self._producer = producer

    async def park(self, partition: int, command: CommandMessage, traceparent: str | None) -> None:
        """Write the command into the lot; returns once the broker has it.

        Raises:
            ParkingUnavailable: not acknowledged; the command stays where it was.
        """
        value = json.dumps(
            {"command": command.model_dump(mode="json"), "traceparent": traceparent},
            separators=(",", ":"),
        ).encode()
        await self._write(partition, command.request_id, value)

    async def unpark(self, partition: int, request_id: str) -> None:
        """Take a command out of the lot (a tombstone).

        Raises:
            ParkingUnavailable: not acknowledged.
        """
        await self._write(partition, request_id, None)

    async def _write(self, partition: int, request_id: str, value: bytes | None) -> None:
        if self._producer is None:
            raise ParkingUnavailable("parking lot not connected")
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self.topic, value, key=request_id.encode(), partition=partition
                ),
                self._settings.kafka_producer_timeout,
            )
        except (KafkaError, TimeoutError) as exc:
            log.warning("parking lot write failed", partition=partition, error=type(exc).__name__)
            raise ParkingUnavailable(type(exc).__name__) from exc

    async def read(self, partition: int) -> list[Parked]:
        """The commands parked in ``partition`` and not taken out, oldest first."""
        consumer = reader(self._settings)
        live: dict[str, Parked] = {}
        try:
            await consumer.start()
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while True:
                batches = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
                for record in batches.get(tp, []):
                    request_id = (record.key or b"").decode(errors="replace")
                    live.pop(request_id, None)  # a later record replaces an earlier one
                    parked = _decode(record.value, record.timestamp)
                    if parked is not None:
                        live[request_id] = parked
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    break
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5)
        return list(live.values())


def _decode(value: bytes | None, timestamp: int) -> Parked | None:
    if value is None:
        return None  # tombstone
    try:
        entry = json.loads(value)
        command = CommandMessage.model_validate(entry["command"])
        traceparent = entry.get("traceparent")
    except (ValueError, KeyError, TypeError):
        log.warning("parked entry unreadable; skipped")
        return None
    return Parked(command, traceparent if isinstance(traceparent, str) else None, timestamp)
