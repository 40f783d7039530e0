"""Webhooks: every status and presence event POSTed, signed, to the operator's subscribers.

One consumer group (``WEBHOOK_GROUP_ID``) reads the commands, results and presence topics.
Its assignor gives every partition to one member: a command's ``queued`` (commands topic)
and its later statuses (results topic) must go out from the same reader to stay in order,
so one instance delivers and the others (more API instances, ``pusher webhooks``
processes) stand by and take over when it leaves; each event is sent by one of them. A
fetched batch (commands topic first) is delivered to every subscription it matches, then
its offsets are committed: delivery is at least once (a crash or a hand-over re-sends the
uncommitted batch; receivers dedupe on ``Pusher-Event-Id``). Within a subscription the
events of one command (one device, for presence) go one after the other, in order;
different commands go in parallel (``WEBHOOK_CONCURRENCY``).

A failed delivery (no answer, not 2xx) is retried with capped exponential backoff and
jitter. A subscription that has failed for longer than ``WEBHOOK_PAUSE_AFTER_SECONDS`` is
paused: its events are dropped (counted) until the subscriptions file changes or is
touched. The file is re-read when it changes; an unreadable file keeps the last good set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import start_http_server

from preservarium_pusher_api import __version__
from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.kafka import consumer_options
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.core.supervision import check_alive
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.services.events import CommandFacts, LiveEvent, event_from_record
from preservarium_pusher_api.services.webhook_config import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    Subscription,
    WebhookConfigError,
    allowed_hosts,
    load_subscriptions,
    sign,
)

log = get_logger(__name__)

_FETCH_MAX_RECORDS: Final = 2000
_USER_AGENT: Final = f"preservarium-pusher-webhooks/{__version__}"


class OneOwnerAssignor(AbstractPartitionAssignor):
    """Every partition of every subscribed topic to one member (the lowest member id)."""

    name = "pusher-one-owner"
    version = 0

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        owner = min(members)
        topics = sorted({topic for meta in members.values() for topic in meta.subscription})
        owned = [(topic, sorted(cluster.partitions_for_topic(topic) or ())) for topic in topics]
        return {
            member: ConsumerProtocolMemberAssignment(
                cls.version, owned if member == owner else [], b""
            )
            for member in members
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        return None


class _Stopping(Exception):
    """The dispatcher stops in the middle of a batch: nothing of it is committed."""


@dataclass
class SubscriptionState:
    """How a subscription is doing (shown by ``GET /api/v1/webhooks``)."""

    subscription: Subscription
    failing_since: float | None = None
    paused: bool = False
    delivered: int = 0
    failed_attempts: int = 0
    dropped: int = 0
    last_error: str | None = None

    def describe(self) -> dict[str, Any]:
        wanted = self.subscription.wanted
        state = "paused" if self.paused else "failing" if self.failing_since else "active"
        return {
            "name": self.subscription.name,
            # without query or fragment: a token there is a secret too
            "url": urlsplit(self.subscription.url)._replace(query="", fragment="").geturl(),
            "state": state,
            "events": sorted(wanted.kinds) or ["presence", "status"],
            "device_ids": sorted(wanted.device_ids),
            "statuses": sorted(wanted.statuses),
            "failing_for_seconds": (
                round(time.monotonic() - self.failing_since, 1) if self.failing_since else None
            ),
            "delivered": self.delivered,
            "failed_attempts": self.failed_attempts,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }


def delivery_body(subscription: str, event: LiveEvent, event_id: str) -> bytes:
    """What a receiver gets: the event as on the stream, with its id and subscription."""
    document: dict[str, Any] = {"id": event_id, "event": event.kind}
    document["subscription"] = subscription
    document["data"] = event.data
    return json.dumps(document, separators=(",", ":")).encode()


class WebhookDispatcher:
    """Reads events in its consumer group and delivers them to the subscriptions."""

    def __init__(self, settings: Settings, metrics: PusherMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._path = settings.webhooks_path
        self._allowed = allowed_hosts(settings.webhook_allowed_hosts)
        self._states: dict[str, SubscriptionState] = {}
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

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the subscriptions and start consuming and watching the file."""
        self._reload()
        self._http = httpx.AsyncClient(
            timeout=self._settings.webhook_timeout_seconds,
            follow_redirects=False,  # a redirect must not lead outside the allow-list
            headers={"User-Agent": _USER_AGENT},
        )
        self._tasks = [
            asyncio.create_task(self._consume_forever(), name="webhook-dispatcher"),
            asyncio.create_task(self._watch_file(), name="webhook-file-watch"),
        ]

    def tasks(self) -> list[asyncio.Task[None]]:
        """The long-lived tasks (supervised: one ending unexpectedly stops the process)."""
        return list(self._tasks)

    async def stop(self) -> None:
        """Stop; a batch still being delivered is not committed (sent again later)."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
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
            "subscriptions": [state.describe() for state in self._states.values()],
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
        # A changed or touched file gives every subscription a fresh start (resumes paused).
        self._states = {s.name: SubscriptionState(s) for s in loaded.subscriptions}
        self.refused = loaded.refused
        for name, reason in loaded.refused.items():
            log.error("webhook subscription refused", subscription=name, reason=reason)
        self._metrics.webhook_paused.clear()
        for name in self._states:
            self._metrics.webhook_paused.labels(name).set(0)
        log.info(
            "webhook subscriptions loaded",
            subscriptions=sorted(self._states),
            refused=len(loaded.refused),
        )

    async def _watch_file(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.webhook_reload_seconds)
            self._reload()

    # -- consuming ----------------------------------------------------------------------

    async def _connect(self) -> AIOKafkaConsumer | None:
        attempt = 0
        while not self._stopping.is_set():
            options = consumer_options(self._settings, self._settings.webhook_group_id)
            options["auto_offset_reset"] = "latest"  # a new group starts with new events
            options["partition_assignment_strategy"] = (OneOwnerAssignor,)
            options["max_poll_interval_ms"] = int(
                (self._settings.webhook_pause_after_seconds + 60) * 1000
            )
            consumer = AIOKafkaConsumer(*self._topics, **options)
            try:
                await consumer.start()
                return consumer
            except (KafkaError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                attempt += 1
                log.warning("webhook consumer not connected; retrying", error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff_delay(attempt, 5.0))
        return None

    async def _consume_forever(self) -> None:
        consumer = self._consumer = await self._connect()
        if consumer is None:
            return
        index = {topic: number for number, topic in enumerate(self._topics)}
        try:
            while not self._stopping.is_set():
                fetched = await consumer.getmany(timeout_ms=500, max_records=_FETCH_MAX_RECORDS)
                if not fetched:
                    continue
                items: list[tuple[LiveEvent, str]] = []
                partitions: list[TopicPartition] = sorted(
                    fetched, key=lambda tp: (index[tp.topic], tp.partition)
                )
                for partition in partitions:
                    for record in fetched[partition]:
                        event = event_from_record(record, index[record.topic], self._facts)
                        if event is not None:
                            event_id = f"{record.topic}:{record.partition}:{record.offset}"
                            items.append((event, event_id))
                try:
                    await self._deliver_batch(items)
                except _Stopping:
                    return
                try:
                    await consumer.commit()
                except CommitFailedError as exc:  # a rebalance: the next owner sends again
                    log.warning("webhook batch not committed", error=type(exc).__name__)
        finally:
            await consumer.stop()

    # -- delivering ---------------------------------------------------------------------

    async def _deliver_batch(self, items: list[tuple[LiveEvent, str]]) -> None:
        states = list(self._states.values())
        if items and states:
            await asyncio.gather(*(self._deliver_to(state, items) for state in states))

    async def _deliver_to(
        self, state: SubscriptionState, items: list[tuple[LiveEvent, str]]
    ) -> None:
        lanes: dict[str, list[tuple[LiveEvent, str]]] = {}
        for event, event_id in items:
            if state.subscription.wanted.matches(event):
                lane = event.request_id or f"device:{event.device_id}"
                lanes.setdefault(lane, []).append((event, event_id))
        slots = asyncio.Semaphore(self._settings.webhook_concurrency)

        async def in_order(entries: list[tuple[LiveEvent, str]]) -> None:
            async with slots:
                for event, event_id in entries:
                    await self._deliver_one(state, event, event_id)

        await asyncio.gather(*(in_order(entries) for entries in lanes.values()))

    async def _deliver_one(self, state: SubscriptionState, event: LiveEvent, event_id: str) -> None:
        name = state.subscription.name
        body = delivery_body(name, event, event_id)
        attempt = 0
        while True:
            if self._stopping.is_set():
                raise _Stopping
            if state.paused:
                state.dropped += 1
                self._metrics.webhook_deliveries.labels(name, "dropped").inc()
                return
            attempt += 1
            error = await self._post(state.subscription, body, event_id, attempt)
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

    async def _post(
        self, subscription: Subscription, body: bytes, event_id: str, attempt: int
    ) -> str | None:
        """None when the receiver answered 2xx, else what went wrong (no secrets, no body)."""
        assert self._http is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(subscription.secret, int(time.time()), body),
            EVENT_ID_HEADER: event_id,
            "Pusher-Delivery-Attempt": str(attempt),
        }
        started = time.perf_counter()
        try:
            response = await self._http.post(subscription.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        finally:
            self._metrics.webhook_duration.labels(subscription.name).observe(
                time.perf_counter() - started
            )
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"


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
