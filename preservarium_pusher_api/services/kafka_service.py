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

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import RecordMetadata

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.contract import dlq_topic
from preservarium_pusher_api.core.kafka import connection_options
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.exceptions import CommandRejectedError, KafkaUnavailableError
from preservarium_pusher_api.metrics import PusherMetrics

log = get_logger(__name__)

_MAX_BACKOFF_SECONDS = 5.0


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
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(self._producer.stop(), self._settings.kafka_producer_timeout)
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
