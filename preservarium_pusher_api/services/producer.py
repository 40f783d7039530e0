"""Producing command records: one, a batch, a cancel, and settling the acknowledgements.

``CommandProducer`` turns validated requests into contract records, hands them to the
Kafka producer and turns each acknowledgement (or failure) into the answer for that
command; accepted commands are remembered (``RecentCommands``) so this instance can answer
their status at once, before the tracker has recorded them. It keeps the counters behind
the service status.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from pydantic_core import to_json

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.contract import (
    CancelMessage,
    CommandMessage,
    cancel_headers,
    command_headers,
    utc_now,
)
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.exceptions import (
    KafkaUnavailableError,
    OutcomeUnknownError,
    PayloadTooLargeError,
    PusherError,
)
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.models import BatchCommandResponse, CommandRequest, CommandResponse
from preservarium_pusher_api.services.kafka_service import (
    KafkaService,
    OutgoingRecord,
    map_kafka_error,
)
from preservarium_pusher_api.services.status_service import RecentCommands
from preservarium_pusher_api.store import queued_from_message

log = get_logger(__name__)


def new_request_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs from one read of the OS random source."""
    entropy = os.urandom(16 * count)
    return [str(uuid.UUID(bytes=entropy[i : i + 16], version=4)) for i in range(0, 16 * count, 16)]


def build_message(
    request: CommandRequest,
    request_id: str,
    default_ttl: float | None = None,
    default_timeout: float | None = None,
) -> CommandMessage:
    """The contract record for an already validated request.

    ``ttl_seconds`` and ``timeout_seconds`` fall back to the given defaults.
    """
    created_at = utc_now()
    ttl = request.ttl_seconds if request.ttl_seconds is not None else default_ttl
    expires_at = created_at + timedelta(seconds=ttl) if ttl else None
    timeout = request.timeout_seconds if request.timeout_seconds is not None else default_timeout
    # model_construct: every field was validated by CommandRequest already.
    return CommandMessage.model_construct(
        request_id=request_id,
        device_id=request.device_id,
        command_type=request.command_type,
        payload=request.payload,
        protocol=request.protocol,
        parser_script_ref=request.parser_script_ref,
        metadata=request.metadata or {},
        qos=1 if request.qos is None else request.qos,
        retain=bool(request.retain),
        confirmable=request.confirmable,
        timeout_seconds=timeout,
        created_at=created_at,
        expires_at=expires_at,
    )


class CommandProducer:
    """Produces command and cancel records and settles their acknowledgements."""

    def __init__(
        self,
        settings: Settings,
        kafka: KafkaService,
        metrics: PusherMetrics,
        recent: RecentCommands | None = None,
    ) -> None:
        self._settings = settings
        self._kafka = kafka
        self._metrics = metrics
        self._recent = recent
        self.commands_processed = 0

    def check_payload_sizes(self, commands: Sequence[CommandRequest]) -> None:
        """Reject the request if any command's serialized payload exceeds the limit.

        Raises:
            PayloadTooLargeError: naming every offending item, before anything is produced.
        """
        limit = self._settings.max_payload_bytes
        details = []
        for index, command in enumerate(commands):
            size = len(to_json(command.payload))
            if size > limit:
                details.append({"index": index, "payload_bytes": size, "limit_bytes": limit})
        if details:
            raise PayloadTooLargeError(
                f"serialized payload exceeds MAX_PAYLOAD_BYTES ({limit} bytes)", details=details
            )

    def _record(self, message: CommandMessage, traceparent: str | None) -> OutgoingRecord:
        return OutgoingRecord(
            topic=self._settings.kafka_command_topic,
            key=message.device_id.encode(),
            value=message.model_dump_json().encode(),
            headers=command_headers(message, traceparent),
        )

    async def push_command(
        self,
        request: CommandRequest,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> CommandResponse:
        """Produce one command (as ``request_id`` when given) and wait for Kafka's
        acknowledgement.

        Raises:
            PayloadTooLargeError, KafkaUnavailableError, CommandRejectedError.
            OutcomeUnknownError: handed to the producer but not acknowledged in time; its
                ``outcome`` gives the answer once Kafka decides.
        """
        self.check_payload_sizes([request])
        message = self._message(request, request_id or str(uuid.uuid4()))
        started = time.perf_counter()
        future: asyncio.Future[RecordMetadata] | None = None
        try:
            async with asyncio.timeout(self._settings.kafka_producer_timeout):
                future = await self._kafka.enqueue(self._record(message, traceparent))
                # shield: a timeout here must not cancel the record inside the producer.
                metadata = await asyncio.shield(future)
        except PusherError as error:
            self._count(message, error)
            raise
        except TimeoutError as exc:
            failure = self._failure(exc)
            self._count(message, failure)
            if future is None:
                raise failure from exc
            outcome = asyncio.ensure_future(self._late_answer(message, future, started))
            outcome.add_done_callback(_retrieved)
            raise OutcomeUnknownError(
                "Kafka did not acknowledge in time; the command may still be accepted",
                outcome,
                retry_after=self._kafka.retry_after,
            ) from exc
        except KafkaError as exc:
            failure = self._failure(exc)
            self._count(message, failure)
            raise failure from exc
        return self._accept_one(message, metadata, started)

    def _accept_one(
        self, message: CommandMessage, metadata: RecordMetadata, started: float
    ) -> CommandResponse:
        accepted = self._accepted(message, metadata, time.perf_counter() - started)
        if self._recent is not None:
            self._recent.add([queued_from_message(message)])
        return accepted

    async def _late_answer(
        self, message: CommandMessage, future: asyncio.Future[RecordMetadata], started: float
    ) -> CommandResponse:
        """The answer a slow acknowledgement finally gives (the producer's own request
        timeout bounds the wait)."""
        try:
            metadata = await future
        except (KafkaError, TimeoutError) as exc:
            raise self._failure(exc) from exc
        log.info("late acknowledgement", request_id=message.request_id)
        return self._accept_one(message, metadata, started)

    async def push_commands_batch(
        self,
        requests: Sequence[CommandRequest],
        traceparent: str | None = None,
        request_ids: Sequence[str] | None = None,
    ) -> BatchCommandResponse:
        """Produce every command first, then await all acknowledgements together.

        Items Kafka refuses are reported failed; the others are accepted. If Kafka is
        known to be down, nothing is produced and ``KafkaUnavailableError`` is raised.
        With ``request_ids`` (an Idempotency-Key's), items handed over but unacknowledged
        at the deadline are not reported failed: ``OutcomeUnknownError`` is raised, whose
        ``outcome`` gives the whole answer once Kafka has decided on each.
        """
        self.check_payload_sizes(requests)
        self._metrics.batch_size.observe(len(requests))
        if not self._kafka.connected:
            raise KafkaUnavailableError(
                "Kafka is unavailable; no command was accepted", retry_after=self._kafka.retry_after
            )
        started = time.perf_counter()
        deadline = started + self._settings.kafka_producer_timeout
        ids = list(request_ids) if request_ids is not None else new_request_ids(len(requests))
        messages = [self._message(request, rid) for request, rid in zip(requests, ids, strict=True)]
        records = [self._record(message, traceparent) for message in messages]
        handed: list[asyncio.Future[RecordMetadata] | PusherError | None] = [None] * len(records)
        try:
            async with asyncio.timeout(self._settings.kafka_producer_timeout):
                await self._kafka.enqueue_many(records, handed)
        except TimeoutError as exc:
            # Items not handed to the producer in time fail; those handed over are awaited.
            timed_out = self._failure(exc)
            handed = [timed_out if item is None else item for item in handed]
        except PusherError as error:  # Kafka went away: nothing was handed over
            handed = [error if item is None else item for item in handed]
        pending = [item for item in handed if item is not None]
        futures = [item for item in pending if isinstance(item, asyncio.Future)]
        if futures:
            await asyncio.wait(futures, timeout=max(deadline - time.perf_counter(), 0.001))
        if request_ids is not None and not all(future.done() for future in futures):
            outcome = asyncio.ensure_future(self._late_batch(messages, pending, futures, started))
            outcome.add_done_callback(_retrieved)
            raise OutcomeUnknownError(
                "Kafka did not acknowledge every command in time; they may still be accepted",
                outcome,
                retry_after=self._kafka.retry_after,
            )
        return self._batch_answer(messages, pending, started)

    async def _late_batch(
        self,
        messages: list[CommandMessage],
        pending: list[asyncio.Future[RecordMetadata] | PusherError],
        futures: list[asyncio.Future[RecordMetadata]],
        started: float,
    ) -> BatchCommandResponse:
        await asyncio.wait(futures)  # the producer's own request timeout bounds this
        return self._batch_answer(messages, pending, started)

    def _batch_answer(
        self,
        messages: list[CommandMessage],
        pending: list[asyncio.Future[RecordMetadata] | PusherError],
        started: float,
    ) -> BatchCommandResponse:
        results = [
            self._settle(message, item, started)
            for message, item in zip(messages, pending, strict=True)
        ]
        successful = sum(result.success for result in results)
        if self._recent is not None and successful:
            self._recent.add(
                queued_from_message(message)
                for message, result in zip(messages, results, strict=True)
                if result.success
            )
        # One line per batch at INFO; the per-command lines are DEBUG (500 lines per
        # request would cost more than producing the records). Failures stay WARNING.
        log.info(
            "batch accepted",
            total_commands=len(results),
            successful=successful,
            failed=len(results) - successful,
            devices=len({message.device_id for message in messages}),
        )
        if not successful and all(r.error_type == KafkaUnavailableError.__name__ for r in results):
            raise KafkaUnavailableError(
                "Kafka is unavailable; no command was accepted", retry_after=self._kafka.retry_after
            )
        return BatchCommandResponse(
            total_commands=len(results),
            successful=successful,
            failed=len(results) - successful,
            results=results,
        )

    def _message(self, request: CommandRequest, request_id: str) -> CommandMessage:
        return build_message(
            request,
            request_id,
            self._settings.default_ttl_seconds,
            self._settings.default_timeout_seconds,
        )

    async def push_cancel(self, request_id: str, device_id: str, protocol: str | None) -> None:
        """Produce a cancel control record keyed like the command (same partition, after it).

        Raises:
            KafkaUnavailableError, CommandRejectedError.
        """
        cancel = CancelMessage(request_id=request_id, device_id=device_id)
        record = OutgoingRecord(
            topic=self._settings.kafka_command_topic,
            key=device_id.encode(),
            value=cancel.model_dump_json().encode(),
            headers=cancel_headers(cancel, protocol),
        )
        try:
            async with asyncio.timeout(self._settings.kafka_producer_timeout):
                future = await self._kafka.enqueue(record)
                await asyncio.shield(future)
        except (KafkaError, TimeoutError) as exc:
            raise self._failure(exc) from exc
        log.info("cancel requested", request_id=request_id, device_id=device_id)

    def _settle(
        self,
        message: CommandMessage,
        item: asyncio.Future[RecordMetadata] | PusherError,
        started: float,
    ) -> CommandResponse:
        if isinstance(item, asyncio.Future):
            if item.done() and item.exception() is None:
                return self._accepted(
                    message, item.result(), time.perf_counter() - started, in_batch=True
                )
            exc = item.exception() if item.done() else TimeoutError()
            error = self._failure(exc or TimeoutError())
        else:
            error = item
        self._count(message, error)
        return CommandResponse(
            success=False,
            request_id=message.request_id,
            message=error.message,
            timestamp=utc_now(),
            error_type=error.error_type,
        )

    def _failure(self, exc: BaseException) -> PusherError:
        self._kafka.note_failure(exc)
        mapped = map_kafka_error(exc, self._kafka.retry_after)
        assert isinstance(mapped, PusherError)
        return mapped

    def _accepted(
        self,
        message: CommandMessage,
        metadata: RecordMetadata,
        elapsed: float,
        *,
        in_batch: bool = False,
    ) -> CommandResponse:
        self.commands_processed += 1
        self._metrics.produce_latency.observe(elapsed)
        self._metrics.commands.labels(message.protocol.value, "accepted").inc()
        (log.debug if in_batch else log.info)(
            "command accepted",
            request_id=message.request_id,
            device_id=message.device_id,
            command_type=message.command_type,
            protocol=message.protocol.value,
            partition=metadata.partition,
            offset=metadata.offset,
        )
        return CommandResponse(
            success=True,
            request_id=message.request_id,
            message="Command accepted",
            timestamp=message.created_at,
            partition=metadata.partition,
            offset=metadata.offset,
        )

    def _count(self, message: CommandMessage, error: PusherError) -> None:
        outcome = "unavailable" if isinstance(error, KafkaUnavailableError) else "rejected"
        self._metrics.commands.labels(message.protocol.value, outcome).inc()
        log.warning(
            "command not accepted",
            request_id=message.request_id,
            device_id=message.device_id,
            command_type=message.command_type,
            protocol=message.protocol.value,
            error_type=error.error_type,
        )


def _retrieved(outcome: asyncio.Future[Any]) -> None:
    """A late outcome nobody waits for (no Idempotency-Key) ends quietly: its failure was
    already counted and answered as 503."""
    if not outcome.cancelled():
        outcome.exception()
