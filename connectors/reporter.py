"""Writes to Kafka for a connector: status events, device presence, dead letters.

Every write is retried while the broker's error is retriable (a status that never reached
the results topic must not let its offset be committed); the runtime gives up only when
it is stopping. An error retrying cannot cure (record too large, not authorized, invalid
record) is not retried: a status event is then written again without its result, so the
command still ends; presence and dead letters are dropped with an error log.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic_core import PydanticSerializationError, to_json

from connectors.settings import ConnectorSettings
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.contract import (
    HEADER_DLQ_REASON,
    CommandStatus,
    DevicePresence,
    Protocol,
    StatusEvent,
    dlq_topic,
    utc_now,
)
from preservarium_pusher_api.core.kafka import connection_options
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

_DETAIL_LIMIT = 500


class PermanentWriteError(Exception):
    """Kafka refused a record for a reason retrying cannot cure."""


def bounded_result(result: Any, limit: int) -> Any:
    """``result``, or a marker in its place when it is over ``limit`` bytes as JSON (or not
    JSON at all): the device's answer still settles its command."""
    if result is None:
        return None
    try:
        size = len(to_json(result))
    except (PydanticSerializationError, ValueError, TypeError, RecursionError):
        return {"truncated": True, "reason": "result is not JSON"}
    if size > limit:
        return {"truncated": True, "reason": f"result of {size} bytes; limit {limit}"}
    return result


class Reporter:
    """The connector's Kafka producer."""

    def __init__(
        self,
        settings: ConnectorSettings,
        protocol: Protocol,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        """Writes for one connector.

        Args:
            settings: topics and Kafka connection.
            protocol: the connector's protocol (``source`` of its events).
            producer: an already started producer to write with (an in-memory one in
                tests); by default ``start`` connects its own.
        """
        self._settings = settings
        self.protocol = protocol
        self.source = settings.source_name(protocol)
        self._producer = producer
        self._background: set[asyncio.Task[None]] = set()

    async def start(self, stopping: asyncio.Event) -> None:
        """Connect, retrying with backoff until Kafka answers or ``stopping`` is set."""
        attempt = 0
        while self._producer is None and not stopping.is_set():
            producer = AIOKafkaProducer(
                **connection_options(self._settings),
                acks="all",
                enable_idempotence=self._settings.kafka_enable_idempotence,
                linger_ms=self._settings.connector_report_linger_ms,
            )
            try:
                await producer.start()
            except (KafkaError, OSError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("kafka producer not connected; retrying", error=type(exc).__name__)
                attempt += 1
                await asyncio.sleep(backoff_delay(attempt, 5.0))
                continue
            self._producer = producer
            return

    async def stop(self, grace: float) -> None:
        """Wait for background writes (up to ``grace`` seconds), flush and close."""
        if self._background:
            await asyncio.wait(self._background, timeout=grace)
        for task in list(self._background):
            task.cancel()
        if self._producer is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(self._producer.stop(), grace or 1)
            self._producer = None

    def status_event(
        self,
        request_id: str,
        device_id: str,
        status: CommandStatus,
        detail: str | None = None,
        result: Any = None,
    ) -> StatusEvent:
        """A StatusEvent from this connector, now."""
        return StatusEvent(
            request_id=request_id,
            device_id=device_id,
            status=status,
            occurred_at=utc_now(),
            source=self.source,
            detail=detail,
            result=bounded_result(result, self._settings.max_result_bytes),
        )

    async def emit(self, event: StatusEvent) -> None:
        """Write a status event to the results topic; returns once acknowledged.

        Refused for good with its result, it is written again with a marker instead of the
        result; refused for good without one, it is dropped with an error log.
        """
        topic = self._settings.kafka_result_topic
        try:
            await self._write(
                topic, event.request_id.encode(), event.model_dump_json().encode(), []
            )
            return
        except PermanentWriteError as exc:
            if event.result is None:
                log.error(
                    "status event dropped: kafka refuses it",
                    request_id=event.request_id,
                    status=event.status.value,
                    error=str(exc),
                )
                return
            reason = f"result not recorded: {exc}"
        bare = event.model_copy(update={"result": {"truncated": True, "reason": reason}})
        with contextlib.suppress(PermanentWriteError):
            await self._write(topic, bare.request_id.encode(), bare.model_dump_json().encode(), [])

    def emit_later(self, event: StatusEvent) -> asyncio.Task[None]:
        """``emit`` in the background (kept until done, awaited on stop)."""
        task = asyncio.create_task(self.emit(event))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def presence_later(self, device_id: str, online: bool | None, detail: str | None) -> None:
        """Write a DevicePresence record in the background."""
        presence = DevicePresence(
            device_id=device_id,
            protocol=self.protocol,
            online=online,
            last_seen=utc_now(),
            source=self.source,
            detail=detail,
        )
        task = asyncio.create_task(
            self._write_or_drop(
                self._settings.kafka_presence_topic,
                device_id.encode(),
                presence.model_dump_json().encode(),
            )
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        """Copy an undecodable record to the DLQ with the reason in a header."""
        headers = [(k, v) for k, v in record.headers if k != HEADER_DLQ_REASON]
        headers.append((HEADER_DLQ_REASON, reason[:_DETAIL_LIMIT].encode()))
        await self._write_or_drop(
            dlq_topic(self._settings.kafka_command_topic), record.key, record.value or b"", headers
        )

    async def _write_or_drop(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        try:
            await self._write(topic, key, value, headers or [])
        except PermanentWriteError as exc:
            log.error("record dropped: kafka refuses it", topic=topic, error=str(exc))

    async def _write(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        attempt = 0
        while True:
            producer = self._producer
            if producer is None:
                raise RuntimeError("reporter is not started")
            try:
                ack = await producer.send(topic, value, key=key, headers=headers)
                await ack
                return
            except KafkaError as exc:
                if not exc.retriable:
                    raise PermanentWriteError(type(exc).__name__) from exc
                attempt += 1
                log.warning("kafka write failed; retrying", topic=topic, error=type(exc).__name__)
                await asyncio.sleep(backoff_delay(attempt, 5.0))
            except TimeoutError as exc:
                attempt += 1
                log.warning("kafka write failed; retrying", topic=topic, error=type(exc).__name__)
                await asyncio.sleep(backoff_delay(attempt, 5.0))
