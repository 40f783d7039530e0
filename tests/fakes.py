"""In-memory stand-ins for fast unit tests of rules: a scripted transport, producers.

They keep what they were given so a test can read it back; they never dedupe, retry or
reorder on their own, so the rule under test is the only thing that can.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata, TopicPartition

from connectors.errors import CommandRejected
from connectors.journal import JournalUnavailable, SentJournal
from connectors.registry import DeviceEntry
from connectors.settings import ConnectorSettings
from connectors.transport import Delivery, Receipt, Transport
from preservarium_pusher_api.core.contract import CommandMessage, DispatchPolicy, Protocol
from preservarium_pusher_api.exceptions import PusherError
from preservarium_pusher_api.services.kafka_service import OutgoingRecord, map_kafka_error

# What a scripted send does: a Receipt to return, an exception to raise, or a callable
# that gets the delivery and returns either (awaitable allowed: a slow device).
Outcome = Receipt | BaseException | Callable[[Delivery], Any]


@dataclass
class FakeTransport(Transport):
    """A transport whose sends follow a script and are all recorded.

    ``script`` is consumed one outcome per ``submit``; when it is empty every send is
    acknowledged (``Receipt(acknowledged=True)``). ``offline`` holds device ids that are
    not ready; ``up`` is the connection.
    """

    protocol: Protocol = Protocol.MQTT
    default_dispatch: DispatchPolicy = DispatchPolicy.ON_ACK
    requires_registration: bool = False
    script: deque[Outcome] = field(default_factory=deque)
    offline: set[str] = field(default_factory=set)
    up: bool = True
    sent: list[Delivery] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def then(self, *outcomes: Outcome) -> FakeTransport:
        """Queue outcomes for the next sends, in order."""
        self.script.extend(outcomes)
        return self

    @property
    def connected(self) -> bool:
        return self.up

    def ready(self, device_id: str) -> bool:
        return self.up and device_id not in self.offline

    async def run(self) -> None:
        await asyncio.Event().wait()

    def target(self, command: CommandMessage, device: DeviceEntry | None) -> Any:
        if command.device_id.startswith("unreachable"):
            raise CommandRejected(f"no address for {command.device_id}")
        return f"fake/{command.device_id}"

    def submit(self, delivery: Delivery) -> Awaitable[Receipt]:
        self.sent.append(delivery)
        self.sent_at.append(time.monotonic())
        outcome = self.script.popleft() if self.script else Receipt(acknowledged=True)
        return self._settle(outcome, delivery)

    @staticmethod
    async def _settle(outcome: Outcome, delivery: Delivery) -> Receipt:
        if callable(outcome) and not isinstance(outcome, BaseException):
            outcome = outcome(delivery)
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, Receipt)
        return outcome

    def request_ids(self) -> list[str]:
        """The request_ids handed over, in order (a repeat means sent twice)."""
        return [delivery.command.request_id for delivery in self.sent]


@dataclass
class ProducedRecord:
    """One record an in-memory producer accepted."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class InMemoryProducer:
    """What the connectors' ``Reporter`` needs of an AIOKafkaProducer, kept in a list."""

    def __init__(self) -> None:
        self.records: list[ProducedRecord] = []
        self.failures: deque[KafkaError] = deque()

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        if self.failures:
            raise self.failures.popleft()
        self.records.append(ProducedRecord(topic, key, value, list(headers or [])))
        ack: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        ack.set_result(_metadata(topic, len(self.records) - 1))
        return ack

    async def stop(self) -> None:
        """Nothing to flush."""

    def on(self, topic: str) -> list[ProducedRecord]:
        """Records of one topic, in order."""
        return [record for record in self.records if record.topic == topic]


class InMemoryKafka:
    """Stands in for the API's ``KafkaService``: acknowledges at once, keeps every record.

    ``hold`` leaves acknowledgements pending (a broker that does not answer);
    ``refuse`` maps device ids (the record key) to the Kafka error their records get.
    """

    def __init__(self) -> None:
        self.records: list[OutgoingRecord] = []
        self.connected = True
        self.last_error: str | None = None
        self.retry_after = 1
        self.hold = False
        self.refuse: dict[str, KafkaError] = {}
        self._reachable = asyncio.Event()

    async def start(self) -> None:
        self._reachable.set()

    async def stop(self) -> None:
        """Nothing to close."""

    def tasks(self) -> list[asyncio.Task[None]]:
        """No background tasks."""
        return []

    async def wait_connected(self) -> None:
        await self._reachable.wait()

    async def check_ready(self) -> bool:
        return self.connected

    async def probe_ready(self) -> bool:
        return self.connected

    async def enqueue(self, record: OutgoingRecord) -> asyncio.Future[RecordMetadata]:
        if not self.connected:
            raise map_kafka_error(KafkaError(), self.retry_after)
        ack: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        device_id = (record.key or b"").decode()
        if device_id in self.refuse:
            ack.set_exception(self.refuse[device_id])
            return ack
        self.records.append(record)
        if not self.hold:
            ack.set_result(_metadata(record.topic, len(self.records) - 1))
        return ack

    async def enqueue_many(
        self,
        records: list[OutgoingRecord],
        into: list[asyncio.Future[RecordMetadata] | Exception | None],
    ) -> None:
        for index, record in enumerate(records):
            try:
                into[index] = await self.enqueue(record)
            except PusherError as error:
                into[index] = error

    def note_failure(self, exc: BaseException) -> None:
        self.last_error = type(exc).__name__


def _metadata(topic: str, offset: int) -> RecordMetadata:
    return RecordMetadata(
        topic=topic,
        partition=0,
        topic_partition=TopicPartition(topic, 0),
        offset=offset,
        timestamp=None,
        timestamp_type=0,
        log_start_offset=0,
    )


class InMemoryJournal(SentJournal):
    """The sent-command journal over an in-memory log (``entries`` per partition, shared
    between instances to play successive owners); ``failing`` refuses every write."""

    def __init__(
        self,
        settings: ConnectorSettings,
        entries: dict[int, list[tuple[str, str]]] | None = None,
    ) -> None:
        super().__init__(settings, "mqtt")
        self.entries: dict[int, list[tuple[str, str]]] = {} if entries is None else entries
        self.failing = False

    async def _write(self, partition: int, request_id: str, event: str) -> None:
        if self.failing:
            raise JournalUnavailable("refused by the test")
        await asyncio.sleep(0)
        self.entries.setdefault(partition, []).append((request_id, event))

    async def _read(self, partition: int, start_ms: int) -> list[tuple[str, str]]:
        await asyncio.sleep(0)
        return list(self.entries.get(partition, []))
