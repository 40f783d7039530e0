"""Live events: the command lifecycle and device presence, read back from Kafka.

An event is built from a record of one of three topics: a command on the commands topic is
its ``queued`` status, a ``StatusEvent`` on the results topic every later one, a
``DevicePresence`` on the presence topic a device going online or offline. Nothing comes
from the memory of the instance that accepted a command, so any API instance serves any
stream, and webhooks see the same events.

Positions are Kafka offsets. ``EventPosition`` holds the next offset to read in every
partition of the three topics and the time of the last event; encoded, it is the SSE
``id`` of an event, so a client that reconnects with ``Last-Event-ID`` (on any instance) is
sought to exactly the records after the last one it got: no gap, no duplicate. Events of
one command share a results partition (key ``request_id``), so they come in order; its
``queued`` record is on the commands topic, read first within each fetch.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.contract import (
    HEADER_KIND,
    CommandMessage,
    DevicePresence,
    MessageKind,
    StatusEvent,
)
from preservarium_pusher_api.core.kafka import connection_options
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.exceptions import KafkaUnavailableError, TooManyStreamsError
from preservarium_pusher_api.metrics import PusherMetrics

log = get_logger(__name__)

# An id longer than this, or naming more partitions, is refused before it is parsed further.
_MAX_ID_LENGTH: Final = 8192
_MAX_PARTITIONS: Final = 1024
_API_SOURCE: Final = "api"


class InvalidEventId(ValueError):
    """A ``Last-Event-ID`` that no stream of this service produced."""


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One event of a stream: ``status`` or ``presence``, with its JSON body."""

    kind: str
    device_id: str
    request_id: str | None
    status: str | None
    data: dict[str, Any]
    timestamp_ms: int


@dataclass(slots=True)
class EventPosition:
    """Next offset per partition of (commands, results, presence) and the last event's time."""

    offsets: list[list[int]]
    timestamp_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def encode(self) -> str:
        """The SSE id: ``<ms>.<commands offsets>.<results offsets>.<presence offsets>``."""
        return ".".join(
            [str(self.timestamp_ms), *("-".join(map(str, topic)) for topic in self.offsets)]
        )

    @classmethod
    def decode(cls, text: str) -> EventPosition:
        """Parse an id written by ``encode``.

        Raises:
            InvalidEventId: not one.
        """
        parts = text.strip().split(".")
        if len(text) > _MAX_ID_LENGTH or len(parts) != 4:
            raise InvalidEventId("Last-Event-ID is not an id of this event stream")
        try:
            timestamp_ms = int(parts[0])
            offsets = [[int(o) for o in part.split("-")] if part else [] for part in parts[1:]]
        except ValueError:
            raise InvalidEventId("Last-Event-ID is not an id of this event stream") from None
        if any(len(topic) > _MAX_PARTITIONS or min(topic, default=0) < 0 for topic in offsets):
            raise InvalidEventId("Last-Event-ID is not an id of this event stream")
        return cls(offsets, timestamp_ms)

    def copy(self) -> EventPosition:
        return EventPosition([list(topic) for topic in self.offsets], self.timestamp_ms)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a stream or a webhook wants; an empty set lets everything through.

    ``request_id`` and ``status`` are about commands: with either, presence is left out.
    """

    device_ids: frozenset[str] = frozenset()
    request_ids: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()

    def matches(self, event: LiveEvent) -> bool:
        if self.kinds and event.kind not in self.kinds:
            return False
        if self.device_ids and event.device_id not in self.device_ids:
            return False
        if event.kind == "presence":
            return not (self.request_ids or self.statuses)
        if self.request_ids and event.request_id not in self.request_ids:
            return False
        return not self.statuses or event.status in self.statuses


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class CommandFacts:
    """Protocol and command type of recent commands (status events do not carry them).

    Filled from ``queued`` records as streams read them; bounded, oldest forgotten first.
    """

    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._facts: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()

    def remember(self, request_id: str, protocol: str | None, command_type: str | None) -> None:
        self._facts[request_id] = (protocol, command_type)
        self._facts.move_to_end(request_id)
        while len(self._facts) > self._capacity:
            self._facts.popitem(last=False)

    def get(self, request_id: str) -> tuple[str | None, str | None] | None:
        return self._facts.get(request_id)


def event_from_record(
    record: ConsumerRecord[bytes, bytes], topic_index: int, facts: CommandFacts
) -> LiveEvent | None:
    """The event a record stands for, or None (cancel records, records that do not parse)."""
    try:
        if topic_index == 0:
            return _queued_event(record, facts)
        if topic_index == 1:
            return _status_event(record, facts)
        return _presence_event(record)
    except ValidationError:
        log.warning(
            "event source record skipped: does not parse",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        return None


def _queued_event(record: ConsumerRecord[bytes, bytes], facts: CommandFacts) -> LiveEvent | None:
    kind = dict(record.headers or ()).get(HEADER_KIND)
    if kind is not None and kind != MessageKind.COMMAND.value.encode():
        return None
    command = CommandMessage.model_validate_json(record.value or b"")
    facts.remember(command.request_id, command.protocol.value, command.command_type)
    data = {
        "request_id": command.request_id,
        "device_id": command.device_id,
        "protocol": command.protocol.value,
        "command_type": command.command_type,
        "status": "queued",
        "at": _iso(command.created_at),
        "source": _API_SOURCE,
        "detail": None,
        "result": None,
    }
    return LiveEvent(
        "status", command.device_id, command.request_id, "queued", data, record.timestamp
    )


def _status_event(record: ConsumerRecord[bytes, bytes], facts: CommandFacts) -> LiveEvent:
    event = StatusEvent.model_validate_json(record.value or b"")
    protocol, command_type = facts.get(event.request_id) or (None, None)
    data = {
        "request_id": event.request_id,
        "device_id": event.device_id,
        "protocol": protocol,
        "command_type": command_type,
        "status": event.status.value,
        "at": _iso(event.occurred_at),
        "source": event.source,
        "detail": event.detail,
        "result": event.result,
    }
    return LiveEvent(
        "status", event.device_id, event.request_id, event.status.value, data, record.timestamp
    )


def _presence_event(record: ConsumerRecord[bytes, bytes]) -> LiveEvent:
    presence = DevicePresence.model_validate_json(record.value or b"")
    data = {
        "device_id": presence.device_id,
        "protocol": presence.protocol.value,
        "online": presence.online,
        "at": _iso(presence.last_seen),
        "source": presence.source,
        "detail": presence.detail,
    }
    return LiveEvent("presence", presence.device_id, None, None, data, record.timestamp)


class EventsGone(Exception):
    """The events after a position are no longer kept (older than the retention window)."""


class EventReader:
    """One reader of the three topics from a position, for one stream (no consumer group)."""

    def __init__(self, settings: Settings, facts: CommandFacts) -> None:
        self._settings = settings
        self._facts = facts
        self._topics = (
            settings.kafka_command_topic,
            settings.kafka_result_topic,
            settings.kafka_presence_topic,
        )
        self._consumer = AIOKafkaConsumer(
            **connection_options(settings),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=settings.kafka_consumer_fetch_max_wait_ms,
            retry_backoff_ms=50,
        )
        self._position = EventPosition([[], [], []])
        self._index: dict[TopicPartition, tuple[int, int]] = {}
        # commands partitions to read up to these offsets before the other topics
        self._catching_up: dict[TopicPartition, int] = {}

    async def open(self, since: EventPosition | None) -> EventPosition:
        """Connect and seek to ``since`` (or to the end of every partition).

        Raises:
            EventsGone: ``since`` is older than the retention window or its records are gone.
            InvalidEventId: ``since`` does not fit these topics.
        """
        await self._consumer.start()
        await self._consumer.topics()  # loads the metadata of every topic
        partitions: list[TopicPartition] = []
        for topic_index, topic in enumerate(self._topics):
            count = len(self._consumer.partitions_for_topic(topic) or ())
            for number in range(count):
                partition = TopicPartition(topic, number)
                self._index[partition] = (topic_index, number)
                partitions.append(partition)
        self._consumer.assign(partitions)
        ends = await self._consumer.end_offsets(partitions)
        self._position = EventPosition(
            [[0] * len(self._consumer.partitions_for_topic(t) or ()) for t in self._topics]
        )
        if since is None:
            for partition in partitions:
                self._seek(partition, ends[partition])
            return self._position.copy()
        await self._seek_to(since, partitions, ends)
        # Far behind, records of all three topics wait at once and the broker hands them
        # over in any order: read the commands topic up to where it ended at open first,
        # so that no command's status comes before its ``queued``.
        self._catching_up = {
            partition: ends[partition]
            for partition in partitions
            if self._index[partition][0] == 0 and self._read_to(partition) < ends[partition]
        }
        if self._catching_up:
            self._consumer.pause(*(p for p in partitions if self._index[p][0] != 0))
        return self._position.copy()

    def _read_to(self, partition: TopicPartition) -> int:
        """The next offset this stream reads in ``partition``."""
        topic_index, number = self._index[partition]
        return self._position.offsets[topic_index][number]

    async def _seek_to(
        self,
        since: EventPosition,
        partitions: list[TopicPartition],
        ends: dict[TopicPartition, int],
    ) -> None:
        retention_ms = self._settings.events_retention_seconds * 1000
        if since.timestamp_ms < time.time() * 1000 - retention_ms:
            raise EventsGone("the events after this id are older than EVENTS_RETENTION_SECONDS")
        beginnings = await self._consumer.beginning_offsets(partitions)
        for partition in partitions:
            topic_index, number = self._index[partition]
            known = since.offsets[topic_index]
            # a partition added since the id was written is read from its beginning
            offset = known[number] if number < len(known) else beginnings[partition]
            if offset > ends[partition]:
                raise InvalidEventId("Last-Event-ID does not belong to these topics")
            if offset < beginnings[partition]:
                raise EventsGone("the events after this id are no longer kept by Kafka")
            self._seek(partition, offset)
        self._position.timestamp_ms = since.timestamp_ms

    def _seek(self, partition: TopicPartition, offset: int) -> None:
        topic_index, number = self._index[partition]
        self._consumer.seek(partition, offset)
        self._position.offsets[topic_index][number] = offset

    async def read(self, timeout_ms: int) -> list[tuple[LiveEvent, EventPosition]]:
        """The next events with the position after each, commands topic first in a fetch."""
        fetched = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=500)
        out: list[tuple[LiveEvent, EventPosition]] = []
        for partition in sorted(fetched, key=lambda tp: self._index[tp]):
            topic_index, number = self._index[partition]
            for record in fetched[partition]:
                self._position.offsets[topic_index][number] = record.offset + 1
                event = event_from_record(record, topic_index, self._facts)
                if event is None:
                    continue
                self._position.timestamp_ms = max(self._position.timestamp_ms, record.timestamp)
                out.append((event, self._position.copy()))
        if self._catching_up:
            for partition, end in list(self._catching_up.items()):
                # a read with nothing at all: nothing left before ``end`` (a gap), go on
                if not fetched or self._read_to(partition) >= end:
                    del self._catching_up[partition]
            if not self._catching_up:
                self._consumer.resume(*self._consumer.paused())
        return out

    async def close(self) -> None:
        await self._consumer.stop()


class EventStreams:
    """Opens readers for streams and keeps the per-caller budget of open streams."""

    def __init__(self, settings: Settings, metrics: PusherMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.facts = CommandFacts()
        self._open: dict[str, int] = {}
        # readers positioned and reading (a stream is admitted a moment before)
        self.serving = 0

    def admit(self, scope: str) -> Callable[[], None]:
        """Count one more stream for ``scope``; returns the function that releases it.

        Raises:
            TooManyStreamsError: ``scope`` holds EVENTS_MAX_STREAMS_PER_KEY already.
        """
        held = self._open.get(scope, 0)
        if held >= self._settings.events_max_streams_per_key:
            raise TooManyStreamsError(
                f"{held} event streams already open for this API key "
                "(EVENTS_MAX_STREAMS_PER_KEY); close one or retry later",
                retry_after=self._settings.events_retry_ms / 1000,
            )
        self._open[scope] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            remaining = self._open[scope] - 1
            if remaining:
                self._open[scope] = remaining
            else:
                del self._open[scope]

        return release

    async def reader(self, since: EventPosition | None) -> tuple[EventReader, EventPosition]:
        """An opened reader at ``since`` (or at the end) and its starting position.

        Raises:
            KafkaUnavailableError: Kafka cannot be reached.
            EventsGone, InvalidEventId: see ``EventReader.open``.
        """
        reader = EventReader(self._settings, self.facts)
        try:
            start = await reader.open(since)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await reader.close()
            if isinstance(exc, KafkaError | OSError):
                raise KafkaUnavailableError(
                    "Kafka cannot be reached; the event stream cannot start", retry_after=1
                ) from exc
            raise
        self.serving += 1
        self._metrics.event_streams.set(self.serving)
        return reader, start

    async def close(self, reader: EventReader) -> None:
        """Close a reader ``reader()`` opened."""
        self.serving -= 1
        self._metrics.event_streams.set(self.serving)
        await reader.close()
