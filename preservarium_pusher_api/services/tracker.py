"""Status tracker: results topic → status store, plus the deadline sweeper.

Consumer group ``pusher-status-tracker`` on ``KAFKA_RESULT_TOPIC``, the presence topic
(written to the devices table) and the commands topic (each command is recorded ``queued``,
so one accepted by an API that died before writing its row is still known); records are
fetched in batches (``getmany``), applied in one store transaction per batch, and the
offsets are committed only after that write. A store failure seeks back and retries the
same batch, so nothing is skipped; events are idempotent, so a batch applied twice is
harmless. After repeated failures the records are tried one by one, and one the store
refuses alone is dropped (logged, counted) instead of holding the topic.

The sweeper marks ``queued`` commands past ``expires_at`` as ``expired`` and ``sent`` or
``delivered`` commands past their execution deadline as ``timed_out``, and publishes each
such change on the results topic (source ``sweeper``) so that event streams and webhooks see
it like any other; reading it back changes nothing (the command is terminal). Its state is the
store (survives restarts) and each change is one conditional UPDATE (several trackers
never double-fire). Deadlines respect lag: each tracker notes when it had read each of its
results partitions to the end (``store.progress``), and the sweeper decides only deadlines
older than the oldest such time across all partitions and trackers — after a restart, a
backlog or a rebalance, the events still unread are applied first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from prometheus_client import start_http_server
from pydantic import ValidationError

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.contract import (
    HEADER_KIND,
    CommandMessage,
    DevicePresence,
    MessageKind,
    StatusEvent,
)
from preservarium_pusher_api.core.kafka import connection_options, consumer_options
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.core.supervision import check_alive
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.store import (
    SWEEPER_SOURCE,
    QueuedCommand,
    StatusStore,
    Transition,
    queued_from_message,
)

log = get_logger(__name__)

_MAX_BACKOFF_SECONDS = 5.0
_Wire = TypeVar("_Wire", StatusEvent, DevicePresence, CommandMessage)
_PURGE_EVERY_SECONDS = 3600.0
# Records per fetch, written in one store transaction.
_FETCH_MAX_RECORDS = 2000
# How often lag and read-to-the-end progress are looked at while records flow.
_OBSERVE_EVERY_SECONDS = 0.25
# Whole-batch failures in a row before records are tried one by one.
_ISOLATE_AFTER_FAILURES = 2


def decode_record(record: ConsumerRecord[bytes, bytes], model: type[_Wire]) -> _Wire | None:
    """The ``model`` (StatusEvent, DevicePresence) in a record, or None (logged) if not one."""
    try:
        return model.model_validate_json(record.value or b"")
    except ValidationError as exc:
        log.warning(
            "record dropped: not a valid " + model.__name__,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=type(exc).__name__,
        )
        return None


class StatusTracker:
    """Applies status events and sweeps deadlines until stopped."""

    def __init__(
        self,
        settings: Settings,
        store: StatusStore,
        metrics: PusherMetrics,
        on_change: Callable[[Iterable[str]], None] | None = None,
        publish: Callable[[list[StatusEvent]], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._devices = store.devices
        self._metrics = metrics
        self._on_change = on_change
        self._publish = publish
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self.running = asyncio.Event()
        # results partitions read to their end, and when (noted in the store now and then)
        self._caught_up: dict[int, float] = {}
        self._progress_noted = 0.0
        self._result_partitions: int | None = None

    async def start(self) -> None:
        """Start consuming and sweeping in the background."""
        self._tasks = [
            asyncio.create_task(self._consume_forever(), name="status-tracker"),
            asyncio.create_task(self._sweep_forever(), name="status-sweeper"),
        ]

    async def stop(self) -> None:
        """Stop both loops; offsets of applied batches are already committed.

        The consume loop finishes its current fetch and leaves the group cleanly; a loop
        that does not end within a few seconds (e.g. still joining) is cancelled.
        """
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=3)
            for task in pending:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks = []

    def tasks(self) -> list[asyncio.Task[None]]:
        """Long-lived tasks to supervise."""
        return list(self._tasks)

    async def wait(self) -> None:
        """Return when a loop ends: only on an unexpected error, raised as TaskDied."""
        await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        check_alive(self._tasks)

    # -- results topic ---------------------------------------------------------------

    async def _consume_forever(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(
                self._settings.kafka_result_topic,
                self._settings.kafka_presence_topic,
                # commands too: a command Kafka accepted is known (queued) even when the API
                # that accepted it died before writing its row
                self._settings.kafka_command_topic,
                **consumer_options(self._settings, self._settings.tracker_group_id),
            )
            try:
                await consumer.start()
                self._consumer = consumer
                self._result_partitions = (
                    len(consumer.partitions_for_topic(self._settings.kafka_result_topic) or ())
                    or None
                )
                attempt = 0
                log.info("status tracker consuming", topic=self._settings.kafka_result_topic)
                self.running.set()
                await self._consume(consumer)
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                self.running.clear()
                log.warning("status tracker lost kafka; reconnecting", error=type(exc).__name__)
                await asyncio.sleep(backoff_delay(attempt, _MAX_BACKOFF_SECONDS))
                attempt += 1
            finally:
                self._consumer = None
                self._result_partitions = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 5)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        failures = 0
        observed = 0.0
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=_FETCH_MAX_RECORDS)
            if not batches:
                await self._update_lag(consumer)
                await self._note_progress(consumer)
                continue
            presence_topic = self._settings.kafka_presence_topic
            command_topic = self._settings.kafka_command_topic
            command_records = [
                record
                for partition, records in batches.items()
                if partition.topic == command_topic
                for record in records
                if dict(record.headers).get(HEADER_KIND) == MessageKind.COMMAND.value.encode()
            ]
            queued = [
                queued_from_message(message)
                for message in (decode_record(r, CommandMessage) for r in command_records)
                if message is not None
            ]
            events = [
                event
                for partition, records in batches.items()
                if partition.topic not in (presence_topic, command_topic)
                for event in (decode_record(record, StatusEvent) for record in records)
                if event is not None
            ]
            presence = [
                item
                for partition, records in batches.items()
                if partition.topic == presence_topic
                for item in (decode_record(record, DevicePresence) for record in records)
                if item is not None
            ]
            invalid = (
                sum(len(r) for p, r in batches.items() if p.topic != command_topic)
                - len(events)
                - len(presence)
                + len(command_records)
                - len(queued)
            )
            if invalid:
                self._metrics.tracker_dropped.labels("invalid").inc(invalid)
            started = time.perf_counter()
            try:
                if failures >= _ISOLATE_AFTER_FAILURES:
                    transitions = await self._apply_one_by_one(events, presence, queued)
                else:
                    await self._store.record_queued(queued)
                    transitions = await self._store.apply_events(events)
                    await self._devices.apply_presence(presence)
            except Exception as exc:  # store down: re-read the same records later
                failures += 1
                self._metrics.store_healthy.set(0)
                log.error("status store write failed; retrying", error=type(exc).__name__)
                for partition, records in batches.items():
                    consumer.seek(partition, records[0].offset)
                await asyncio.sleep(backoff_delay(failures, _MAX_BACKOFF_SECONDS))
                continue
            failures = 0
            self._metrics.store_healthy.set(1)
            self._metrics.store_write_latency.labels("events").observe(
                time.perf_counter() - started
            )
            await consumer.commit(
                {partition: records[-1].offset + 1 for partition, records in batches.items()}
            )
            self._record(transitions)
            # Lag and progress ask for every partition's position: a few times a second is
            # enough (the sweeper reads progress once per sweep), not after every fetch.
            now = time.monotonic()
            if now - observed >= _OBSERVE_EVERY_SECONDS:
                observed = now
                await self._update_lag(consumer)
                await self._note_progress(consumer)

    async def _apply_one_by_one(
        self,
        events: list[StatusEvent],
        presence: list[DevicePresence],
        queued: list[QueuedCommand] | None = None,
    ) -> list[Transition]:
        """After repeated failures of a whole batch: each record in its own transaction.

        A record the store refuses while it takes others is dropped (logged, counted) so
        one bad record cannot hold the results topic; if it takes none, the store is down
        and the error is raised for the batch to be read again.
        """
        transitions: list[Transition] = []
        refused: list[tuple[str, Exception]] = []
        taken = 0
        for row in queued or []:
            try:
                await self._store.record_queued([row])
                taken += 1
            except Exception as exc:  # this record alone, or the store
                refused.append((row.request_id, exc))
        for event in events:
            try:
                transitions += await self._store.apply_events([event])
                taken += 1
            except Exception as exc:  # this record alone, or the store
                refused.append((event.request_id, exc))
        for item in presence:
            try:
                await self._devices.apply_presence([item])
                taken += 1
            except Exception as exc:  # this record alone, or the store
                refused.append((item.device_id, exc))
        if refused and not taken:
            raise refused[0][1]
        for key, error in refused:
            self._metrics.tracker_dropped.labels("refused").inc()
            log.error(
                "record dropped: the status store refuses it", key=key, error=type(error).__name__
            )
        return transitions

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        lag = 0
        for partition in consumer.assignment():
            highwater = consumer.highwater(partition)
            if highwater is None:
                continue
            with contextlib.suppress(KafkaError, AssertionError):
                lag += max(0, highwater - await consumer.position(partition))
        self._metrics.tracker_lag.set(lag)

    async def _note_progress(self, consumer: AIOKafkaConsumer) -> None:
        """Note the results partitions read to their end as of their last fetch; written
        to the store at most once per sweep interval."""
        topic = self._settings.kafka_result_topic
        for partition in consumer.assignment():
            if partition.topic != topic:
                continue
            highwater = consumer.highwater(partition)
            fetched_at = consumer.last_poll_timestamp(partition)
            if highwater is None or not fetched_at:
                continue
            with contextlib.suppress(KafkaError, AssertionError):
                if await consumer.position(partition) >= highwater:
                    self._caught_up[partition.partition] = fetched_at / 1000
        now = time.monotonic()
        if self._caught_up and now - self._progress_noted >= self._settings.sweep_interval_seconds:
            owned = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
            noted = {p: at for p, at in self._caught_up.items() if p in owned}
            self._caught_up.clear()
            self._progress_noted = now
            try:
                await self._store.progress.caught_up(topic, noted)
            except Exception as exc:  # the sweeper waits; the next note tries again
                log.warning("tracker progress not noted", error=type(exc).__name__)

    def _record(self, transitions: list[Transition]) -> None:
        for transition in transitions:
            protocol = transition.protocol or "unknown"
            status = transition.status.value
            self._metrics.command_status.labels(status, protocol).inc()
            if transition.status.is_terminal:
                self._metrics.command_latency.labels(protocol, status).observe(
                    max(0.0, transition.at - transition.created_at)
                )
        if transitions and self._on_change is not None:
            self._on_change(transition.request_id for transition in transitions)

    # -- deadlines --------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        last_purge = 0.0
        while not self._stopping.is_set():
            started = time.perf_counter()
            try:
                transitions = await self._sweep()
                if time.time() - last_purge > _PURGE_EVERY_SECONDS:
                    await self._store.idempotency_keys.purge(
                        time.time() - self._settings.idempotency_ttl_seconds
                    )
                    last_purge = time.time()
            except Exception as exc:  # keep sweeping when the store comes back
                log.error("deadline sweep failed", error=type(exc).__name__)
            else:
                self._metrics.store_write_latency.labels("sweep").observe(
                    time.perf_counter() - started
                )
                for transition in transitions:
                    log.info(
                        "command deadline passed",
                        request_id=transition.request_id,
                        status=transition.status.value,
                    )
                self._record(transitions)
                await self._publish_sweeps(transitions)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.sweep_interval_seconds)

    async def _publish_sweeps(self, transitions: list[Transition]) -> None:
        if self._publish is None or not transitions:
            return
        events = [
            StatusEvent(
                request_id=transition.request_id,
                device_id=transition.device_id or "unknown",
                status=transition.status,
                occurred_at=datetime.fromtimestamp(transition.at, UTC),
                source=SWEEPER_SOURCE,
                detail=transition.detail,
            )
            for transition in transitions
        ]
        try:
            await self._publish(events)
        except Exception as exc:  # the store has them; only live watchers miss them
            log.warning(
                "deadline statuses not published", count=len(events), error=type(exc).__name__
            )

    async def _sweep(self) -> list[Transition]:
        """Deadlines up to the trackers' watermark; none while it is unknown."""
        if self._result_partitions is None:
            return []  # not consuming: the partition count is unknown
        read_until = await self._store.progress.watermark(
            self._settings.kafka_result_topic, self._result_partitions
        )
        if read_until is None:
            return []  # some results partition has never been read to its end
        self._metrics.tracker_watermark_age.set(max(0.0, time.time() - read_until))
        return await self._store.sweep(
            grace=self._settings.sweep_grace_seconds, read_until=read_until
        )


async def run_tracker(settings: Settings) -> None:
    """``pusher tracker``: the tracker alone, until cancelled (SIGINT/SIGTERM)."""
    store = StatusStore(settings.status_store_url, pool_size=settings.status_store_pool_size)
    await store.start()
    metrics = PusherMetrics()
    if settings.tracker_metrics_port:
        start_http_server(settings.tracker_metrics_port, registry=metrics.registry)
        log.info("tracker metrics served", port=settings.tracker_metrics_port)
    producer = AIOKafkaProducer(**connection_options(settings), acks="all")
    await producer.start()

    async def publish(events: list[StatusEvent]) -> None:
        acks = [
            await producer.send(
                settings.kafka_result_topic, e.model_dump_json().encode(), e.request_id.encode()
            )
            for e in events
        ]
        await asyncio.gather(*acks)

    tracker = StatusTracker(settings, store, metrics, publish=publish)
    await tracker.start()
    try:
        await tracker.wait()
    finally:
        await tracker.stop()
        await producer.stop()
        await store.stop()
