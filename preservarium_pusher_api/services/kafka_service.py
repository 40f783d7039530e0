"""Kafka producer with a supervisor: the API starts without Kafka and recovers when it returns.

A background task owns the producer's life: it connects with capped exponential backoff and
jitter, creates missing topics, and then probes the cluster every ``KAFKA_HEALTH_INTERVAL``
seconds. Request handlers read ``connected`` to fail fast with 503 instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import RecordMetadata

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.contract import StatusEvent, dlq_topic
from preservarium_pusher_api.core.kafka import connection_options
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.exceptions import (
    CommandRejectedError,
    KafkaUnavailableError,
    PusherError,
)
from preservarium_pusher_api.metrics import PusherMetrics

log = get_logger(__name__)

_MAX_BACKOFF_SECONDS = 5.0
# The producer's own default partitioner (murmur2 of the key), for records placed in bulk.
_PARTITIONER = DefaultPartitioner()


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """One record to produce."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def map_kafka_error(exc: BaseException, retry_after: int) -> Exception:
    """Turn an aiokafka failure into the service's exception tree."""
    if isinstance(exc, TimeoutError):
        return KafkaUnavailableError("Kafka did not acknowledge in time", retry_after=retry_after)
    if isinstance(exc, KafkaError) and not exc.retriable and type(exc).__name__ != "KafkaError":
        # Permanent refusals (record too large, authorization, ...): retrying will not help.
        return CommandRejectedError(f"Kafka refused the record: {type(exc).__name__}")
    return KafkaUnavailableError(
        f"Kafka is unavailable: {type(exc).__name__}", retry_after=retry_after
    )


class KafkaService:
    """Owns the aiokafka producer and knows whether Kafka is reachable."""

    def __init__(self, settings: Settings, metrics: PusherMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._connected = False
        self._wake = asyncio.Event()
        self._reachable = asyncio.Event()
        self._topics_ready = False
        self.last_error: str | None = None
        self._ready_probe: asyncio.Future[bool] | None = None
        self._ready_at = float("-inf")
        self._ready_answer = False

    @property
    def connected(self) -> bool:
        """Whether the last connection attempt or probe reached the cluster."""
        return self._connected

    @property
    def retry_after(self) -> int:
        """Seconds a client should wait before retrying while Kafka is unavailable."""
        return max(1, math.ceil(self._settings.kafka_health_interval))

    async def start(self) -> None:
        """Start the supervisor; returns at once, Kafka may still be unreachable."""
        self._supervisor = asyncio.create_task(self._supervise(), name="kafka-supervisor")

    def tasks(self) -> list[asyncio.Task[None]]:
        """Long-lived tasks to supervise."""
        return [self._supervisor] if self._supervisor is not None else []

    async def stop(self) -> None:
        """Stop probing, flush what is buffered and close the producer."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._producer is not None:
            # asyncio.wait, not wait_for: a producer whose close waits on a request the broker
            # never answers must not hold the process's shutdown (wait_for would wait for the
            # cancelled close to finish).
            closing = asyncio.ensure_future(self._producer.stop())
            done, _ = await asyncio.wait({closing}, timeout=self._settings.kafka_producer_timeout)
            if not done:
                closing.cancel()
                log.warning("kafka producer did not close in time; left behind")
            elif not closing.cancelled() and closing.exception() is not None:
                log.warning("kafka producer close failed", error=type(closing.exception()).__name__)
            self._producer = None
        self._set_connected(False)

    async def wait_connected(self) -> None:
        """Return once Kafka is reachable (wrap in ``asyncio.timeout`` to bound it)."""
        await self._reachable.wait()

    async def probe_ready(self) -> bool:
        """``check_ready`` for the readiness route: callers arriving together share one
        metadata request, and an answer is reused for ``KAFKA_HEALTH_INTERVAL`` / 4 (at most
        one second), so a flood of probes costs Kafka nothing more."""
        now = time.monotonic()
        if now - self._ready_at < min(1.0, self._settings.kafka_health_interval / 4):
            return self._ready_answer
        if self._ready_probe is None or self._ready_probe.done():
            self._ready_probe = asyncio.ensure_future(self.check_ready())
        answer = await asyncio.shield(self._ready_probe)
        self._ready_at, self._ready_answer = time.monotonic(), answer
        return answer

    async def check_ready(self) -> bool:
        """Ask the cluster for metadata now (bounded by the producer timeout)."""
        producer = self._producer
        if producer is None:
            return False
        try:
            await asyncio.wait_for(
                producer.client.fetch_all_metadata(), self._settings.kafka_producer_timeout
            )
        except (KafkaError, TimeoutError, OSError) as exc:
            self._mark_unavailable(exc)
            return False
        if not self._topics_ready:
            await self._recover_topics()
        self._set_connected(self._topics_ready)
        return self._topics_ready

    async def enqueue(self, record: OutgoingRecord) -> asyncio.Future[RecordMetadata]:
        """Hand a record to the producer's buffer; the future resolves on the broker's ack.

        Raises:
            KafkaUnavailableError: Kafka is known to be unreachable (fail fast).
            CommandRejectedError: the producer refused the record for good.
        """
        producer = self._producer
        if producer is None or not self._connected:
            raise KafkaUnavailableError(
                "Kafka is unavailable; the command was not accepted", retry_after=self.retry_after
            )
        try:
            return await producer.send(
                record.topic, record.value, key=record.key, headers=record.headers
            )
        except (KafkaError, TimeoutError) as exc:
            self.note_failure(exc)
            raise map_kafka_error(exc, self.retry_after) from exc

    async def publish_statuses(self, events: Sequence[StatusEvent]) -> None:
        """Write status events to the results topic (key ``request_id``); returns once
        every one is acknowledged."""
        topic = self._settings.kafka_result_topic
        acks = [
            await self.enqueue(
                OutgoingRecord(topic, e.request_id.encode(), e.model_dump_json().encode(), [])
            )
            for e in events
        ]
        await asyncio.gather(*acks)

    async def enqueue_many(
        self,
        records: Sequence[OutgoingRecord],
        into: list[asyncio.Future[RecordMetadata] | PusherError | None],
    ) -> None:
        """Hand many records to the producer in bulk: one record batch per partition (a new
        one when it is full) instead of one ``send`` per record.

        Keyed records go to the partition ``enqueue`` would pick (the default partitioner,
        murmur2 of the key), so the order per key holds across both paths. ``into[i]``
        becomes the future of ``records[i]`` (resolving with that record's metadata) as
        soon as it is handed over, or its error; an entry still None was not handed over
        (the caller's deadline passed first).

        Raises:
            KafkaUnavailableError: Kafka is known to be unreachable (nothing handed over).
        """
        producer = self._producer
        if producer is None or not self._connected:
            raise KafkaUnavailableError(
                "Kafka is unavailable; the command was not accepted", retry_after=self.retry_after
            )
        groups: dict[tuple[str, int], list[int]] = {}
        try:
            partitions: dict[str, list[int]] = {}
            limit = self._settings.kafka_max_request_size
            for index, record in enumerate(records):
                size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
                    record.key, record.value, record.headers
                )
                if size > limit:  # refused alone, as ``send`` refuses it
                    into[index] = CommandRejectedError(
                        "Kafka refused the record: MessageSizeTooLargeError "
                        f"({size} bytes; KAFKA_MAX_REQUEST_SIZE is {limit})"
                    )
                    continue
                topic = record.topic
                if topic not in partitions:
                    partitions[topic] = sorted(await producer.partitions_for(topic))
                partition = _PARTITIONER(record.key, partitions[topic], partitions[topic])
                groups.setdefault((topic, partition), []).append(index)
            for (topic, partition), indexes in groups.items():
                batch = producer.create_batch()
                members: list[tuple[int, int]] = []
                for index in indexes:
                    record = records[index]
                    appended = batch.append(
                        key=record.key, value=record.value, timestamp=None, headers=record.headers
                    )
                    if appended is None:  # full: send it, start the next one
                        await self._send_batch(producer, batch, topic, partition, members, into)
                        batch, members = producer.create_batch(), []
                        appended = batch.append(
                            key=record.key,
                            value=record.value,
                            timestamp=None,
                            headers=record.headers,
                        )
                    members.append((index, appended.offset))
                await self._send_batch(producer, batch, topic, partition, members, into)
        except (KafkaError, TimeoutError) as exc:
            self.note_failure(exc)
            error = map_kafka_error(exc, self.retry_after)
            assert isinstance(error, PusherError)
            for index, item in enumerate(into):
                if item is None:
                    into[index] = error

    @staticmethod
    async def _send_batch(
        producer: AIOKafkaProducer,
        batch: Any,
        topic: str,
        partition: int,
        members: list[tuple[int, int]],
        into: list[asyncio.Future[RecordMetadata] | PusherError | None],
    ) -> None:
        if not members:
            return
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in members]
        done = await producer.send_batch(batch, topic, partition=partition)

        def settle(acked: asyncio.Future[RecordMetadata]) -> None:
            failure = None if acked.cancelled() else acked.exception()
            for future, (_, relative) in zip(futures, members, strict=True):
                if future.done():
                    continue
                if acked.cancelled():
                    future.cancel()
                elif failure is not None:
                    future.set_exception(failure)
                else:
                    base = acked.result()
                    future.set_result(base._replace(offset=base.offset + relative))

        done.add_done_callback(settle)
        for future, (index, _) in zip(futures, members, strict=True):
            into[index] = future

    def note_failure(self, exc: BaseException) -> None:
        """Record a produce failure; connection-level failures flip ``connected`` off."""
        mapped = map_kafka_error(exc, self.retry_after)
        if isinstance(mapped, KafkaUnavailableError):
            self._mark_unavailable(exc)
        else:
            self.last_error = str(mapped)

    async def _supervise(self) -> None:
        attempt = 0
        while True:
            if self._producer is None:
                try:
                    await self._connect()
                    attempt = 0
                except (KafkaError, TimeoutError, OSError) as exc:
                    self._mark_unavailable(exc)
                    attempt += 1
                    await asyncio.sleep(backoff_delay(attempt, _MAX_BACKOFF_SECONDS))
                    continue
            else:
                await self.check_ready()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.kafka_health_interval)
            self._wake.clear()

    async def _connect(self) -> None:
        settings = self._settings
        producer = AIOKafkaProducer(
            **connection_options(settings),
            acks="all",
            enable_idempotence=settings.kafka_enable_idempotence,
            linger_ms=settings.kafka_linger_ms,
            max_request_size=settings.kafka_max_request_size,
            compression_type=settings.kafka_compression_type,
        )
        try:
            await asyncio.wait_for(producer.start(), settings.kafka_producer_timeout)
            if settings.kafka_create_topics:
                await self._ensure_topics()
            self._topics_ready = True
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producer = producer
        self._set_connected(True)
        log.info("kafka connected", bootstrap_servers=settings.kafka_bootstrap_servers)

    async def _recover_topics(self) -> None:
        # The cluster came back: a rebuilt or in-memory broker may have lost the topics, and
        # records produced before they exist again could be lost, so stay unready until then.
        try:
            if self._settings.kafka_create_topics:
                await self._ensure_topics()
        except (KafkaError, TimeoutError, OSError) as exc:
            self._mark_unavailable(exc)
            return
        self._topics_ready = True

    async def _ensure_topics(self) -> None:
        settings = self._settings
        wanted = [
            settings.kafka_command_topic,
            settings.kafka_result_topic,
            settings.kafka_presence_topic,
            dlq_topic(settings.kafka_command_topic),
        ]
        admin = AIOKafkaAdminClient(**connection_options(settings))
        await asyncio.wait_for(admin.start(), settings.kafka_producer_timeout)
        try:
            existing = set(await admin.list_topics())
            missing = [name for name in wanted if name not in existing]
            if missing:
                await self._create_topics(admin, missing)
        finally:
            await admin.close()

    async def _create_topics(self, admin: AIOKafkaAdminClient, names: Sequence[str]) -> None:
        settings = self._settings
        topics = [
            NewTopic(name, settings.kafka_topic_partitions, settings.kafka_topic_replication_factor)
            for name in names
        ]
        try:
            await admin.create_topics(topics)
        except TopicAlreadyExistsError:
            pass  # another API replica created it first
        log.info("kafka topics created", topics=list(names))

    def _mark_unavailable(self, exc: BaseException) -> None:
        was_connected = self._connected
        self.last_error = f"kafka: {type(exc).__name__}: {exc}"[:500]
        self._topics_ready = False
        self._set_connected(False)
        if was_connected:
            log.warning("kafka unavailable", error_type=type(exc).__name__)
            self._wake.set()  # probe again soon instead of waiting a full interval

    def _set_connected(self, connected: bool) -> None:
        if connected and not self._connected and self._producer is not None:
            log.info("kafka reachable")
        self._connected = connected
        if connected:
            self._reachable.set()
        else:
            self._reachable.clear()
        self._metrics.kafka_connected.set(1 if connected else 0)
