"""Record intake: each fetched record becomes work on its device's lane, a cancel, or a
dead letter.

Records of other protocols are skipped by their ``protocol`` header without decoding the
value. Commands go to the lane of their device (created on first use, dropped when idle);
a cancel marks its command before it is sent, or says it came too late; a cancel that
arrives before its command (after a rebalance) is remembered for a while. A record that
does not decode goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from connectors.dispatcher import Dispatcher
from connectors.journal import SentJournal
from connectors.lanes import DeviceLane
from connectors.observability import ConnectorMetrics
from connectors.offsets import OffsetBook
from connectors.reporter import Reporter
from connectors.work import Stage, Work
from preservarium_pusher_api.core.contract import (
    HEADER_KIND,
    HEADER_PROTOCOL,
    HEADER_TRACEPARENT,
    CancelMessage,
    CommandMessage,
    CommandStatus,
    MessageKind,
)
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

_CANCELS_REMEMBERED = 10_000


class RecordIntake:
    """What the runtime does with each record it fetched; owns the works and the lanes."""

    def __init__(
        self,
        protocol: str,
        offsets: OffsetBook,
        metrics: ConnectorMetrics,
        reporter: Reporter,
        journal: SentJournal,
    ) -> None:
        self.protocol = protocol
        self._offsets = offsets
        self._metrics = metrics
        self._reporter = reporter
        self._journal = journal
        self._dispatcher: Dispatcher | None = None
        self.works: dict[str, Work] = {}
        self.lanes: dict[str, DeviceLane] = {}
        self.background: set[asyncio.Task[None]] = set()
        self._early_cancels: OrderedDict[str, None] = OrderedDict()

    def bind(self, dispatcher: Dispatcher) -> None:
        """The dispatcher the device lanes run their commands through."""
        self._dispatcher = dispatcher

    def take(self, partition: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        self._offsets.track(partition, record.offset)
        headers = dict(record.headers)
        protocol = headers.get(HEADER_PROTOCOL)
        if protocol is not None and protocol.decode(errors="replace") != self.protocol:
            self._offsets.finish(partition, record.offset)  # another connector's record
            return
        # what earlier owners of the partition sent is read back before anything is sent
        self._journal.load(partition.partition, record.timestamp)
        if headers.get(HEADER_KIND) == MessageKind.CANCEL.value.encode():
            if self._journal.is_loaded(partition.partition):
                self._take_cancel(partition, record)
            else:
                self._in_background(self._cancel_when_loaded(partition, record))
            return
        try:
            if record.value is None:
                raise ValueError("record has no value")
            command = CommandMessage.model_validate_json(record.value)
        except (ValidationError, ValueError) as exc:
            self._dead_letter(partition, record, exc)
            return
        if command.protocol.value != self.protocol:
            self._offsets.finish(partition, record.offset)
            return
        traceparent = headers.get(HEADER_TRACEPARENT)
        work = Work(
            command,
            partition,
            record.offset,
            traceparent=traceparent.decode(errors="replace") if traceparent else None,
        )
        if command.request_id in self._early_cancels:
            del self._early_cancels[command.request_id]
            work.cancelled = True
            self._metrics.outcome("cancelled")
            self._reporter.emit_later(
                self._reporter.status_event(
                    command.request_id,
                    command.device_id,
                    CommandStatus.CANCELLED,
                    "cancelled before it was sent to the device",
                )
            )
        self.works[command.request_id] = work
        lane = self.lanes.get(command.device_id)
        if lane is None:
            assert self._dispatcher is not None, "bind() the dispatcher first"
            lane = self.lanes[command.device_id] = DeviceLane(
                command.device_id, self._dispatcher, self.lane_idle
            )
        lane.add(work)

    async def _cancel_when_loaded(
        self, partition: TopicPartition, record: ConsumerRecord[bytes, bytes]
    ) -> None:
        # a cancel for a command an earlier owner already sent must not report cancelled
        await self._journal.ready(partition.partition)
        if self._journal.is_loaded(partition.partition):  # else: no longer ours
            self._take_cancel(partition, record)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _take_cancel(self, partition: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            cancel = CancelMessage.model_validate_json(record.value or b"")
        except ValidationError as exc:
            self._dead_letter(partition, record, exc)
            return
        self._offsets.finish(partition, record.offset)
        work = self.works.get(cancel.request_id)
        if work is not None and work.stage is Stage.WAITING and not work.cancelled:
            work.cancelled = True
            work.wake.set()
            self._metrics.outcome("cancelled")
            log.info("command cancelled before sending", request_id=cancel.request_id)
            self._reporter.emit_later(
                self._reporter.status_event(
                    cancel.request_id,
                    cancel.device_id,
                    CommandStatus.CANCELLED,
                    "cancelled before it was sent to the device",
                )
            )
            return
        if work is not None or self._journal.sent(partition.partition, cancel.request_id):
            status = work.last_status if work is not None else CommandStatus.SENT
            if work is not None and work.cancelled:
                return  # a second cancel for the same command
            log.info("cancel arrived after sending; ignored", request_id=cancel.request_id)
            self._reporter.emit_later(
                self._reporter.status_event(
                    cancel.request_id,
                    cancel.device_id,
                    status if not status.is_terminal else CommandStatus.SENT,
                    "cancel arrived after the command was sent; not cancelled",
                )
            )
            return
        # Not seen yet (e.g. the command is still ahead of us after a rebalance).
        self._early_cancels[cancel.request_id] = None
        while len(self._early_cancels) > _CANCELS_REMEMBERED:
            self._early_cancels.popitem(last=False)

    def _dead_letter(
        self, partition: TopicPartition, record: ConsumerRecord[bytes, bytes], exc: Exception
    ) -> None:
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
        self._metrics.outcome("dlq")
        log.warning(
            "undecodable record sent to the dead-letter topic",
            partition=partition.partition,
            offset=record.offset,
            error=type(exc).__name__,
        )

        async def write() -> None:
            await self._reporter.dead_letter(record, reason)
            self._offsets.finish(partition, record.offset)

        self._in_background(write())

    def finish(self, work: Work) -> None:
        self.works.pop(work.command.request_id, None)
        self._offsets.finish(work.partition, work.offset)

    def drop(self, partitions: set[TopicPartition]) -> list[Work]:
        """Forget the commands of partitions that went to another replica; returns them."""
        dropped = [work for work in self.works.values() if work.partition in partitions]
        for work in dropped:
            work.abandoned = True
            work.wake.set()
            del self.works[work.command.request_id]
        return dropped

    def lane_idle(self, device_id: str) -> None:
        lane = self.lanes.get(device_id)
        if lane is not None and not lane.queue:
            del self.lanes[device_id]
