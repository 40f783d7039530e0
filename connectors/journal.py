"""The sent-command journal: what was handed to a device, kept in Kafka beside the commands.

A connector records each request_id it is about to hand to a device in the journal topic
(one per protocol, ``{commands topic}.journal.{protocol}``), in the partition of the same
number as the command's partition, and waits for the broker's acknowledgement before the
command leaves the process. A crash in between costs a command that waits for its
deadline (``expired``/``timed_out``), never one run twice.

Whoever owns a commands partition next — this process after a restart, or another replica
after a rebalance or a SIGKILL — reads that journal partition back before it sends anything
from it. Where to start reading comes from the first command record it takes from the
partition: every journal entry about that record or a later one was written after the
record was produced, so reading from the record's timestamp (less
``CONNECTOR_JOURNAL_SKEW_SECONDS`` for clocks that disagree) finds them all
(``offsets_for_times``). Nothing is kept on disk and nothing is named after the host, so a
recreated container or a fresh replica knows what the dead one sent.

The knowledge of a partition is dropped when it goes to another replica. Entries are
bounded per partition (oldest forgotten first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from connectors.settings import ConnectorSettings
from connectors.topics import ensure_like_commands, reader
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.kafka import connection_options
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

_SENT = "sent"
_FORGOTTEN = "forgotten"


class JournalUnavailable(Exception):
    """The journal entry was not acknowledged: the command must not be sent now."""


def journal_topic(settings: ConnectorSettings, protocol: str) -> str:
    """The journal topic of a protocol's connectors."""
    return settings.connector_journal_topic or f"{settings.kafka_command_topic}.journal.{protocol}"


class SentJournal:
    """request_ids handed to devices, per commands partition, durable in Kafka."""

    def __init__(self, settings: ConnectorSettings, protocol: str) -> None:
        self._settings = settings
        self.topic = journal_topic(settings, protocol)
        self._connector_id = settings.connector_id
        self._capacity = settings.connector_dedupe_size
        self._sent: dict[int, OrderedDict[str, None]] = {}
        self._loaded: dict[int, asyncio.Event] = {}
        self._loads: dict[int, asyncio.Task[None]] = {}
        self._producer: AIOKafkaProducer | None = None
        # loads that ended with an unexpected error: the runtime raises them (crash-only)
        self.failed: list[asyncio.Task[None]] = []

    # -- life cycle -------------------------------------------------------------------

    async def start(self, stopping: asyncio.Event) -> None:
        """Connect and make sure the journal topic exists with the commands topic's
        partition count; retries with backoff until Kafka answers or ``stopping`` is set."""
        attempt = 0
        while self._producer is None and not stopping.is_set():
            producer = AIOKafkaProducer(
                **connection_options(self._settings),
                acks="all",
                enable_idempotence=self._settings.kafka_enable_idempotence,
                linger_ms=1,
            )
            try:
                await producer.start()
                await ensure_like_commands(self._settings, self.topic)
            except (KafkaError, OSError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("journal not ready; retrying", error=type(exc).__name__)
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), backoff_delay(attempt, 5.0))
                continue
            self._producer = producer

    async def stop(self) -> None:
        """Stop loading and close the producer."""
        for task in self._loads.values():
            task.cancel()
        await asyncio.gather(*self._loads.values(), return_exceptions=True)
        self._loads.clear()
        if self._producer is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(self._producer.stop(), 5)
            self._producer = None

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The acks=all producer (shared with the parking lot), once started."""
        return self._producer

    # -- what a partition's owner knows -----------------------------------------------

    def load(self, partition: int, since_ms: int) -> None:
        """Start reading the partition's journal back (once per ownership) from entries
        written at ``since_ms`` less the clock skew allowance."""
        if partition in self._loaded:
            return
        self._loaded[partition] = asyncio.Event()
        self._sent[partition] = OrderedDict()
        start_ms = max(0, since_ms - int(self._settings.connector_journal_skew_seconds * 1000))
        task = asyncio.create_task(
            self._load(partition, start_ms), name=f"journal-load-{partition}"
        )
        task.add_done_callback(self._note_failure)
        self._loads[partition] = task

    def _note_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.failed.append(task)

    def is_loaded(self, partition: int) -> bool:
        """True once the partition's journal has been read back."""
        event = self._loaded.get(partition)
        return event is not None and event.is_set()

    async def ready(self, partition: int) -> None:
        """Wait until the partition's journal has been read back."""
        event = self._loaded.get(partition)
        if event is None:
            raise RuntimeError(f"journal of partition {partition} not loading")
        await event.wait()

    def sent(self, partition: int, request_id: str) -> bool:
        """True if the request_id was handed to a device by any owner of the partition."""
        return request_id in self._sent.get(partition, ())

    def __contains__(self, request_id: str) -> bool:
        return any(request_id in ids for ids in self._sent.values())

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._sent.values())

    def drop(self, partitions: list[int]) -> None:
        """The partitions went to another replica: forget what is known of them."""
        for partition in partitions:
            task = self._loads.pop(partition, None)
            if task is not None:
                task.cancel()
            event = self._loaded.pop(partition, None)
            if event is not None:
                event.set()  # whoever waits wakes, and finds the partition gone
            self._sent.pop(partition, None)

    async def remember(self, partition: int, request_id: str) -> None:
        """Record the request_id as handed to the device; returns once the broker has it.

        Raises:
            JournalUnavailable: not acknowledged; the command must not be sent now.
        """
        self._add(partition, request_id)
        try:
            await self._write(partition, request_id, _SENT)
        except JournalUnavailable:
            self._sent.get(partition, OrderedDict()).pop(request_id, None)
            raise

    async def forget(self, partition: int, request_id: str) -> None:
        """Undo ``remember`` for a command that surely did not leave this process.

        Best effort: if the entry is not written, a later owner skips the command as
        sent (it then ends by its deadline), which is the safe side.
        """
        self._sent.get(partition, OrderedDict()).pop(request_id, None)
        with contextlib.suppress(JournalUnavailable):
            await self._write(partition, request_id, _FORGOTTEN)

    # -- Kafka ------------------------------------------------------------------------

    async def _write(self, partition: int, request_id: str, event: str) -> None:
        if self._producer is None:
            raise JournalUnavailable("journal not connected")
        value = json.dumps(
            {
                "request_id": request_id,
                "event": event,
                "connector_id": self._connector_id,
                "at": time.time(),
            },
            separators=(",", ":"),
        ).encode()
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self.topic, value, key=request_id.encode(), partition=partition
                ),
                self._settings.kafka_producer_timeout,
            )
        except (KafkaError, TimeoutError) as exc:
            log.warning("journal write failed", partition=partition, error=type(exc).__name__)
            raise JournalUnavailable(type(exc).__name__) from exc

    def _add(self, partition: int, request_id: str) -> None:
        ids = self._sent.setdefault(partition, OrderedDict())
        ids[request_id] = None
        ids.move_to_end(request_id)
        while len(ids) > self._capacity:
            ids.popitem(last=False)

    async def _load(self, partition: int, start_ms: int) -> None:
        attempt = 0
        while True:
            try:
                entries = await asyncio.wait_for(
                    self._read(partition, start_ms), self._settings.kafka_request_timeout
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                attempt += 1
                log.warning(
                    "journal read failed; retrying", partition=partition, error=type(exc).__name__
                )
                await asyncio.sleep(backoff_delay(attempt, 5.0))
                continue
            break
        ids = self._sent.setdefault(partition, OrderedDict())
        known_here = dict(ids)  # written by this process while loading: newest
        ids.clear()
        for request_id, event in entries:
            if event == _FORGOTTEN:
                ids.pop(request_id, None)
            else:
                self._add(partition, request_id)
        for request_id in known_here:
            self._add(partition, request_id)
        self._loaded[partition].set()
        self._loads.pop(partition, None)
        log.info("journal read back", partition=partition, request_ids=len(ids))

    async def _read(self, partition: int, start_ms: int) -> list[tuple[str, str]]:
        consumer = reader(self._settings)
        try:
            await consumer.start()
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            found = (await consumer.offsets_for_times({tp: start_ms}))[tp]
            # no entry at or after the time (some brokers answer with timestamp -1)
            start = end if found is None or found.timestamp < 0 else found.offset
            entries: list[tuple[str, str]] = []
            consumer.seek(tp, start)
            # to the end as the fetches report it (their high watermark): some brokers'
            # ListOffsets answer counts the last batch as one record
            while True:
                batches = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
                for record in batches.get(tp, []):
                    entry = _decode(record.value)
                    if entry is not None:
                        entries.append(entry)
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= max(highwater, end):
                    break
            return entries
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5)


async def timestamp_at(
    settings: ConnectorSettings, tp: TopicPartition, offset: int | None
) -> int | None:
    """The timestamp (ms) of the record at ``offset`` of ``tp`` (or the first after it;
    None: from the beginning); None when there is none yet."""
    consumer = reader(settings)
    try:
        await consumer.start()
        consumer.assign([tp])
        if offset is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)
        while True:
            batches = await consumer.getmany(tp, timeout_ms=200, max_records=1)
            records = batches.get(tp, [])
            if records:
                return int(records[0].timestamp)
            highwater = consumer.highwater(tp)
            if highwater is not None and await consumer.position(tp) >= highwater:
                return None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 5)


def _decode(value: bytes | None) -> tuple[str, str] | None:
    try:
        entry = json.loads(value or b"")
        return str(entry["request_id"]), str(entry["event"])
    except (ValueError, KeyError, TypeError):
        log.warning("journal entry unreadable; skipped")
        return None
