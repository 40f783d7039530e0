"""Webhooks: every status and presence event POSTed, signed, to the operator's subscribers.

One consumer group (``WEBHOOK_GROUP_ID``) reads the commands, results and presence topics;
one member owns every partition and delivers, the others stand by (``webhook_group``).

Every subscription has its own backlog and delivery task, so a failing receiver falls
behind alone. A fetched batch (commands topic first) is queued to every subscription it
matches; its offsets are committed once every subscription has finished it (delivered,
or dropped while paused): delivery is at least once (a crash or a hand-over re-sends what
was not committed, to every subscription; receivers dedupe on ``Pusher-Event-Id``). When
the slowest active subscription holds ``WEBHOOK_BACKLOG_EVENTS``, fetching pauses until
it catches up. Within a subscription the events of one command (one device, for presence)
go one after the other, in order; different commands go in parallel
(``WEBHOOK_CONCURRENCY``).

A failed delivery (no answer, not 2xx) is retried with capped exponential backoff and
jitter. A subscription that has failed for longer than ``WEBHOOK_PAUSE_AFTER_SECONDS`` is
paused: its events are dropped (counted) until the subscriptions file changes or is
touched. The file is re-read when it changes; an unreadable file keeps the last good set.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Mapping
from typing import Any, Final

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import start_http_server

from preservarium_pusher_api import __version__
from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.core.supervision import check_alive
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.services.events import CommandFacts, LiveEvent, event_from_record
from preservarium_pusher_api.services.webhook_backlog import (
    Batch,
    Pipeline,
    SubscriptionState,
    delivery_body,
    post_delivery,
)
from preservarium_pusher_api.services.webhook_config import (
    WebhookConfigError,
    allowed_hosts,
    load_subscriptions,
)
from preservarium_pusher_api.services.webhook_group import join_group

log = get_logger(__name__)

_FETCH_MAX_RECORDS: Final = 2000
_USER_AGENT: Final = f"preservarium-pusher-webhooks/{__version__}"


class _Abandoned(Exception):
    """The batch is no longer this instance's to deliver (stopping, or a hand-over)."""


class WebhookDispatcher:
    """Reads events in its consumer group and delivers them to the subscriptions."""

    def __init__(self, settings: Settings, metrics: PusherMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._path = settings.webhooks_path
        self._allowed = allowed_hosts(settings.webhook_allowed_hosts)
        self._pipelines: dict[str, Pipeline] = {}
        self.refused: dict[str, str] = {}
        self.file_error: str | None = None
        self._file_seen: tuple[int, int] | None = None
        self._facts = CommandFacts()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._topics = (
            settings.kafka_command_topic,
            settings.kafka_result_topic,
            settings.kafka_presence_topic,
        )
        # Fetched batches not yet finished by every subscription, oldest first; the
        # finished prefix is committed.
        self._pending: collections.deque[Batch] = collections.deque()
        self._failure: BaseException | None = None
        # Deliveries happen only while this instance owns the partitions: closed during a
        # rebalance; a new generation abandons what was fetched under the old one.
        self._open = asyncio.Event()
        self._open.set()
        self._generation = 0
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._owned: frozenset[TopicPartition] = frozenset()
        self._fetched_to: dict[TopicPartition, int] = {}
        self._unanchored: frozenset[TopicPartition] = frozenset()
        # commands partitions to read up to these offsets before the other topics
        self._behind: dict[TopicPartition, int] = {}

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the subscriptions and start consuming and watching the file."""
        self._http = httpx.AsyncClient(
            timeout=self._settings.webhook_timeout_seconds,
            follow_redirects=False,  # a redirect must not lead outside the allow-list
            headers={"User-Agent": _USER_AGENT},
        )
        self._reload()
        self._tasks = [
            asyncio.create_task(self._consume_forever(), name="webhook-dispatcher"),
            asyncio.create_task(self._watch_file(), name="webhook-file-watch"),
        ]

    def tasks(self) -> list[asyncio.Task[None]]:
        """The long-lived tasks (supervised: one ending unexpectedly stops the process; a
        subscription's delivery task that fails ends the dispatcher's)."""
        return list(self._tasks)

    async def stop(self) -> None:
        """Stop; batches still being delivered are not committed (sent again later)."""
        self._stopping.set()
        self._open.set()
        for pipeline in self._pipelines.values():
            pipeline.ready.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_pipelines(list(self._pipelines.values()))
        if self._http is not None:
            await self._http.aclose()

    async def wait(self) -> None:
        """Until a task ends (``pusher webhooks`` exits with it)."""
        await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        check_alive(self._tasks)

    @property
    def delivering(self) -> bool:
        """True while this instance owns the group's partitions (the others stand by)."""
        return bool(self._consumer is not None and self._consumer.assignment())

    def describe(self) -> dict[str, Any]:
        """Subscriptions, their state and what the file refused (never a secret)."""
        return {
            "delivering": self.delivering,
            "path": str(self._path) if self._path else None,
            "file_error": self.file_error,
            "subscriptions": [
                {**pipeline.state.describe(), "backlog": pipeline.backlog}
                for pipeline in self._pipelines.values()
            ],
            "refused": dict(self.refused),
        }

    # -- the subscriptions file ---------------------------------------------------------

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            stat = self._path.stat()
            seen = (stat.st_mtime_ns, stat.st_size)
        except OSError as exc:
            seen = (0, 0)
            self.file_error = f"cannot read {self._path}: {exc.strerror}"
        if seen == self._file_seen:
            return
        self._file_seen = seen
        try:
            loaded = load_subscriptions(self._path, self._allowed)
        except WebhookConfigError as exc:
            self.file_error = str(exc)
            log.error("webhook subscriptions not reloaded; keeping the last ones", error=str(exc))
            return
        self.file_error = None
        self.refused = loaded.refused
        for name, reason in loaded.refused.items():
            log.error("webhook subscription refused", subscription=name, reason=reason)
        # A changed or touched file gives every subscription a fresh start (resumes paused);
        # a subscription kept under its name keeps its backlog (sent to its URL as now
        # given), a new one starts with the next fetch, a removed one lets go of its backlog.
        wanted = {subscription.name: subscription for subscription in loaded.subscriptions}
        removed = [p for name, p in self._pipelines.items() if name not in wanted]
        self._pipelines = {
            name: self._pipeline(name, SubscriptionState(subscription))
            for name, subscription in wanted.items()
        }
        for pipeline in removed:
            self._release(pipeline)
            if pipeline.task is not None:
                pipeline.task.cancel()
        self._metrics.webhook_paused.clear()
        self._metrics.webhook_backlog.clear()
        for name, pipeline in self._pipelines.items():
            self._metrics.webhook_paused.labels(name).set(0)
            self._metrics.webhook_backlog.labels(name).set(pipeline.backlog)
        log.info(
            "webhook subscriptions loaded",
            subscriptions=sorted(self._pipelines),
            refused=len(loaded.refused),
        )

    def _pipeline(self, name: str, state: SubscriptionState) -> Pipeline:
        pipeline = self._pipelines.get(name)
        if pipeline is not None:  # its backlog goes on, to the URL and secret now given
            pipeline.state = state
            return pipeline
        pipeline = Pipeline(state)
        pipeline.task = asyncio.create_task(self._deliver_forever(pipeline), name=f"webhook-{name}")
        pipeline.task.add_done_callback(self._pipeline_ended)
        return pipeline

    def _pipeline_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping.is_set():
            return
        error = task.exception() or RuntimeError(f"{task.get_name()} ended")
        log.error("webhook delivery task died", task=task.get_name(), error=repr(error))
        self._failure = error  # the consume loop raises it: the process goes down

    def _release(self, pipeline: Pipeline) -> None:
        """The pipeline will not deliver what it holds: its batches count as finished."""
        while pipeline.queue:
            batch, _ = pipeline.queue.popleft()
            self._finished(batch)
        pipeline.backlog = 0

    @staticmethod
    def _finished(batch: Batch) -> None:
        batch.remaining -= 1

    async def _stop_pipelines(self, pipelines: list[Pipeline]) -> None:
        tasks = [p.task for p in pipelines if p.task is not None and not p.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._settings.webhook_timeout_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_file(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.webhook_reload_seconds)
            self._reload()

    # -- consuming ----------------------------------------------------------------------

    async def _consume_forever(self) -> None:
        consumer = self._consumer = await join_group(
            self._settings, self._topics, self, self._stopping
        )
        if consumer is None:
            return
        try:
            while not self._stopping.is_set():
                if self._failure is not None:
                    raise self._failure
                if self._unanchored:
                    await self._anchor(consumer)
                await self._commit_finished(consumer)
                # While the slowest active subscription's backlog is full, its partitions
                # are paused: memory stays bounded and the consumer keeps polling (it stays
                # in the group however long a receiver fails).
                backlogged = self._backlogged()
                owned = consumer.assignment()
                # Far behind, the commands topic is read up to where it ended first, so
                # that no command's status goes out before its ``queued``.
                held = {p for p in owned if p.topic != self._topics[0]} if self._behind else set()
                consumer.resume(*(owned - held))
                consumer.pause(*(owned if backlogged else held))
                fetched = await consumer.getmany(
                    timeout_ms=100 if backlogged else 500, max_records=_FETCH_MAX_RECORDS
                )
                if fetched:
                    self._dispatch(fetched)
                if self._behind and not backlogged:
                    self._behind = {
                        partition: end
                        for partition, end in self._behind.items()
                        # nothing fetched at all: nothing left before ``end`` (a gap)
                        if fetched and self._fetched_to.get(partition, -1) < end
                    }
        finally:
            with contextlib.suppress(KafkaError):
                await self._commit_finished(consumer)
            await consumer.stop()

    def _backlogged(self) -> bool:
        limit = self._settings.webhook_backlog_events
        return any(p.backlog >= limit and not p.state.paused for p in self._pipelines.values())

    def _dispatch(self, fetched: Mapping[TopicPartition, list[Any]]) -> None:
        index = {topic: number for number, topic in enumerate(self._topics)}
        partitions = sorted(fetched, key=lambda tp: (index[tp.topic], tp.partition))
        items: list[tuple[LiveEvent, str]] = []
        for partition in partitions:
            for record in fetched[partition]:
                event = event_from_record(record, index[record.topic], self._facts)
                if event is not None:
                    event_id = f"{record.topic}:{record.partition}:{record.offset}"
                    items.append((event, event_id))
            self._fetched_to[partition] = fetched[partition][-1].offset + 1
        offsets = {tp: fetched[tp][-1].offset + 1 for tp in partitions}
        batch = Batch(items, offsets, self._generation)
        self._pending.append(batch)
        if items:
            for name, pipeline in self._pipelines.items():
                pipeline.put(batch)
                self._metrics.webhook_backlog.labels(name).set(pipeline.backlog)

    async def _anchor(self, consumer: AIOKafkaConsumer) -> None:
        """Commit where reading starts on owned partitions the group has no offset for yet:
        an instance taking over later starts there, not at the end (``latest``), so the
        events of a partition that was quiet until now are not skipped. And note how far
        the commands topic reaches now, to read it up to there first."""
        owned = self._unanchored
        self._unanchored = frozenset()
        try:
            starts = {}
            positions = {}
            for partition in owned:
                positions[partition] = await consumer.position(partition)
                if await consumer.committed(partition) is None:
                    starts[partition] = positions[partition]
            if starts:
                await consumer.commit(starts)
            commands = [p for p in owned if p.topic == self._topics[0]]
            ends = await consumer.end_offsets(commands) if commands else {}
            self._behind.update(
                (partition, end) for partition, end in ends.items() if positions[partition] < end
            )
        except KafkaError as exc:  # a rebalance meanwhile: the next assignment anchors again
            log.warning("webhook start offsets not committed", error=type(exc).__name__)

    async def _commit_finished(self, consumer: AIOKafkaConsumer) -> None:
        offsets: dict[TopicPartition, int] = {}
        while self._pending and self._pending[0].remaining <= 0:
            offsets.update(self._pending.popleft().offsets)
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:  # a rebalance: the next owner sends again
            log.warning("webhook batch not committed", error=type(exc).__name__)

    # -- hand-over between instances ----------------------------------------------------

    async def revoked(self, consumer: AIOKafkaConsumer) -> None:
        """Partitions are taken away (a rebalance): deliver nothing more until it is known
        who owns them; commit what is finished."""
        if not self._stopping.is_set():  # stopping: the deliveries end by themselves
            self._open.clear()
        await self._idle.wait()  # attempts under way end (WEBHOOK_TIMEOUT_SECONDS at most)
        with contextlib.suppress(KafkaError):
            await self._commit_finished(consumer)

    async def assigned(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> None:
        """This instance owns ``partitions`` now. Every one it owned before among them
        (the same set, or more: a topic was created meanwhile): the backlogs go on and
        reading resumes where it was. One lost (or none owned): what was fetched is
        abandoned; the owner reads it again from the committed offsets."""
        owned = frozenset(partitions)
        if self._owned and self._owned <= owned:
            for partition, offset in self._fetched_to.items():
                consumer.seek(partition, offset)
            self._unanchored |= owned - self._owned
        else:
            self._generation += 1
            self._unanchored = owned
            self._behind.clear()
            self._pending.clear()
            self._fetched_to.clear()
            for name, pipeline in self._pipelines.items():
                pipeline.queue.clear()
                pipeline.backlog = 0
                self._metrics.webhook_backlog.labels(name).set(0)
        self._owned = owned
        self._open.set()

    # -- delivering ---------------------------------------------------------------------

    async def _deliver_forever(self, pipeline: Pipeline) -> None:
        while not self._stopping.is_set():
            if not pipeline.queue:
                pipeline.ready.clear()
                await pipeline.ready.wait()
                continue
            batch, matching = pipeline.queue[0]
            abandoned = False
            try:
                await self._deliver_batch(pipeline, batch, matching)
            except* _Abandoned:
                abandoned = True
            if abandoned:  # stopping (nothing of it counts as finished), or handed over
                continue
            # a reload may have let go of the backlog meanwhile
            if pipeline.queue and pipeline.queue[0][0] is batch:
                pipeline.queue.popleft()
                pipeline.backlog -= len(matching)
                self._metrics.webhook_backlog.labels(pipeline.state.subscription.name).set(
                    pipeline.backlog
                )
                self._finished(batch)

    async def _deliver_batch(
        self, pipeline: Pipeline, batch: Batch, items: list[tuple[LiveEvent, str]]
    ) -> None:
        lanes: dict[str, list[tuple[LiveEvent, str]]] = {}
        for event, event_id in items:
            lane = event.request_id or f"device:{event.device_id}"
            lanes.setdefault(lane, []).append((event, event_id))
        slots = asyncio.Semaphore(self._settings.webhook_concurrency)

        async def in_order(entries: list[tuple[LiveEvent, str]]) -> None:
            async with slots:
                for event, event_id in entries:
                    await self._deliver_one(pipeline, batch, event, event_id)

        # a lane that is abandoned ends the others too
        async with asyncio.TaskGroup() as lanes_running:
            for entries in lanes.values():
                lanes_running.create_task(in_order(entries))

    async def _deliver_one(
        self, pipeline: Pipeline, batch: Batch, event: LiveEvent, event_id: str
    ) -> None:
        attempt = 0
        body: bytes | None = None
        while True:
            if not self._stopping.is_set():
                await self._open.wait()
            if batch.generation != self._generation or self._stopping.is_set():
                raise _Abandoned
            state = pipeline.state  # a reload may have replaced it (fresh start)
            name = state.subscription.name
            if state.paused:
                state.dropped += 1
                self._metrics.webhook_deliveries.labels(name, "dropped").inc()
                return
            attempt += 1
            body = body or delivery_body(name, event, event_id)
            self._in_flight += 1
            self._idle.clear()
            try:
                assert self._http is not None
                error = await post_delivery(
                    self._http, state.subscription, body, event_id, attempt, self._metrics
                )
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()
            if error is None:
                state.delivered += 1
                state.failing_since = None
                self._metrics.webhook_deliveries.labels(name, "delivered").inc()
                return
            state.failed_attempts += 1
            state.last_error = error
            self._metrics.webhook_deliveries.labels(name, "failed").inc()
            now = time.monotonic()
            state.failing_since = state.failing_since or now
            if now - state.failing_since > self._settings.webhook_pause_after_seconds:
                if not state.paused:
                    state.paused = True
                    self._metrics.webhook_paused.labels(name).set(1)
                    log.error("webhook subscription paused", subscription=name, error=error)
                continue
            delay = backoff_delay(attempt, self._settings.webhook_max_backoff_seconds, base=0.25)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)


async def run_webhooks(settings: Settings) -> None:
    """``pusher webhooks``: the dispatcher alone, until cancelled (SIGINT/SIGTERM)."""
    metrics = PusherMetrics()
    if settings.webhook_metrics_port:
        start_http_server(settings.webhook_metrics_port, registry=metrics.registry)
        log.info("webhook metrics served", port=settings.webhook_metrics_port)
    dispatcher = WebhookDispatcher(settings, metrics)
    await dispatcher.start()
    try:
        await dispatcher.wait()
    finally:
        await dispatcher.stop()
