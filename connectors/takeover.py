"""Taking over a commands partition: read what earlier owners left before acting on it.

When a partition is assigned, its records wait here until two things are read back:

1. the parking lot of the partition (commands parked for offline devices), and
2. the sent-command journal of the partition, from the oldest time anything still
   unfinished could have been sent: the first uncommitted command's timestamp, or the
   oldest parked command's, less the clock skew allowance.

Then the parked commands go first into their devices' lanes (they are older than anything
uncommitted of the same device), and the records that waited are taken in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from connectors.journal import SentJournal, timestamp_at
from connectors.parking import ParkingLot
from connectors.settings import ConnectorSettings
from connectors.work import Work
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.core.supervision import check_alive

log = get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


class Takeover:
    """Per partition: ready to take records, or reading back (records wait)."""

    def __init__(
        self,
        settings: ConnectorSettings,
        journal: SentJournal,
        lot: ParkingLot,
        on_parked: Callable[[Work], None],
        on_record: Callable[[TopicPartition, Record], None],
    ) -> None:
        self._settings = settings
        self._journal = journal
        self._lot = lot
        self._on_parked = on_parked
        self._on_record = on_record
        self._ready: set[TopicPartition] = set()
        self._waiting: dict[TopicPartition, list[Record]] = {}
        self._tasks: dict[TopicPartition, asyncio.Task[None]] = {}
        self.failed: list[asyncio.Task[None]] = []

    def ready(self, partition: TopicPartition) -> bool:
        """True once the partition's lot and journal were read back."""
        return partition in self._ready

    def hold(self, partition: TopicPartition, record: Record) -> None:
        """Keep a record until the partition is ready."""
        self._waiting.setdefault(partition, []).append(record)

    def start(
        self,
        partition: TopicPartition,
        committed: Callable[[TopicPartition], Awaitable[int | None]],
    ) -> None:
        """Begin reading back a newly assigned partition."""
        if partition in self._ready or partition in self._tasks:
            return
        task = asyncio.create_task(
            self._take_over(partition, committed), name=f"takeover-{partition.partition}"
        )
        task.add_done_callback(self._note_failure)
        self._tasks[partition] = task

    def _note_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.failed.append(task)

    def check(self) -> None:
        """Raise TaskDied if a read-back ended with an unexpected error (crash-only: the
        partition would otherwise wait for it forever)."""
        check_alive(self.failed)

    def drop(self, partitions: set[TopicPartition]) -> None:
        """The partitions went to another replica: stop reading, forget what waited."""
        for partition in partitions:
            task = self._tasks.pop(partition, None)
            if task is not None:
                task.cancel()
            self._ready.discard(partition)
            self._waiting.pop(partition, None)

    async def stop(self) -> None:
        """Cancel reads in progress."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _take_over(
        self,
        partition: TopicPartition,
        committed: Callable[[TopicPartition], Awaitable[int | None]],
    ) -> None:
        attempt = 0
        while True:
            try:
                parked = await asyncio.wait_for(
                    self._lot.read(partition.partition), self._settings.kafka_request_timeout
                )
                position = await committed(partition)
                first = await asyncio.wait_for(
                    timestamp_at(self._settings, partition, position),
                    self._settings.kafka_request_timeout,
                )
                break
            except (KafkaError, OSError, TimeoutError) as exc:
                attempt += 1
                log.warning(
                    "partition read-back failed; retrying",
                    partition=partition.partition,
                    error=type(exc).__name__,
                )
                await asyncio.sleep(backoff_delay(attempt, 5.0))
        times = [int(time.time() * 1000)]
        times += [first] if first is not None else []
        times += [item.parked_at_ms for item in parked]
        self._journal.load(partition.partition, min(times))
        await self._journal.ready(partition.partition)
        for item in parked:
            work = Work(item.command, partition, -1, parked=True, traceparent=item.traceparent)
            self._on_parked(work)
        self._ready.add(partition)
        self._tasks.pop(partition, None)
        waiting = self._waiting.pop(partition, [])
        log.info(
            "partition taken over",
            partition=partition.partition,
            parked=len(parked),
            waiting_records=len(waiting),
        )
        for record in waiting:
            self._on_record(partition, record)
