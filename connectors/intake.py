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
from connectors.parking import ParkingLot, ParkingUnavailable
from connectors.reporter import Reporter
from connectors.settings import ConnectorSettings
from connectors.takeover import Takeover
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
        lot: ParkingLot,
        settings: ConnectorSettings,
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
        self.failed: list[asyncio.Task[None]] = []
        self._early_cancels: OrderedDict[str, None] = OrderedDict()
        self._lot = lot
        self._parking: set[str] = set()
        self.takeover = Takeover(settings, journal, lot, self.enqueue, self._take_now)

    def bind(self, dispatcher: Dispatcher) -> None:
        """The dispatcher the device lanes run their commands through."""
        self._dispatcher = dispatcher

    def take(self, partition: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        """A fetched record; it waits while its partition is being taken over."""
        self._offsets.track(partition, record.offset)
        if self.takeover.ready(partition):
            self._take_now(partition, record)
        else:
            self.takeover.hold(partition, record)

    def _take_now(self, partition: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        headers = dict(record.headers)
        protocol = headers.get(HEADER_PROTOCOL)
        if protocol is not None and protocol.decode(errors="replace") != self.protocol:
            self._offsets.finish(partition, record.offset)  # another connector's record
            return
        if headers.get(HEADER_KIND) == MessageKind.CANCEL.value.encode():
            self._take_cancel(partition, record)
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
        self.enqueue(work)

    def enqueue(self, work: Work) -> None:
        """Put a command behind its device's earlier ones (parked too, if they are)."""
        command = work.command
        self.works[command.request_id] = work
        lane = self.lanes.get(command.device_id)
        if lane is None:
            assert self._dispatcher is not None, "bind() the dispatcher first"
            lane = self.lanes[command.device_id] = DeviceLane(
                command.device_id, self._dispatcher, self.lane_idle
            )
        lane.add(work)
        if lane.queue[0].parked and not work.parked:
            self.park(command.device_id)  # behind parked commands: parked as well

    # -- the parking lot (``parking.py``) ---------------------------------------------

    def park(self, device_id: str) -> None:
        """Park the device's waiting commands, in order (in the background, once)."""
        if device_id in self._parking:
            return
        self._parking.add(device_id)
        self._in_background(self._park_lane(device_id))

    async def _park_lane(self, device_id: str) -> None:
        try:
            lane = self.lanes.get(device_id)
            while lane is not None:
                todo = [w for w in lane.queue if not w.parked and w.stage is Stage.WAITING]
                todo = [w for w in todo if not (w.abandoned or w.cancelled)]
                if not todo:
                    return
                for work in todo:
                    partition = work.partition.partition
                    try:
                        await self._lot.park(partition, work.command, work.traceparent)
                    except ParkingUnavailable:
                        return  # still held; parked on the next try
                    work.parked = True
                    self._offsets.finish(work.partition, work.offset)
                    if work.stage is Stage.DONE:  # sent meanwhile: out of the lot again
                        await self._unpark(work)
                    self._metrics.parked.labels(self.protocol).inc()
                lane = self.lanes.get(device_id)
        finally:
            self._parking.discard(device_id)

    async def _unpark(self, work: Work) -> None:
        try:
            await self._lot.unpark(work.partition.partition, work.command.request_id)
        except ParkingUnavailable:
            # left in the lot: the next owner reads it back and the journal (or its
            # terminal status) keeps it from running again
            log.warning(
                "parked command not taken out of the lot", request_id=work.command.request_id
            )

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed.append(task)  # raised by the runtime: crash-only

    def _take_cancel(self, partition: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            cancel = CancelMessage.model_validate_json(record.value or b"")
        except ValidationError as exc:
            self._dead_letter(partition, record, exc)
            return
        work = self.works.get(cancel.request_id)
        if work is not None and work.parked and work.stage is Stage.WAITING:
            # the cancel's offset is finished once the lot no longer holds the command
            self._in_background(self._unpark_then_finish(work, partition, record.offset))
        else:
            self._offsets.finish(partition, record.offset)
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

    async def _unpark_then_finish(self, work: Work, partition: TopicPartition, offset: int) -> None:
        try:
            await self._lot.unpark(work.partition.partition, work.command.request_id)
        except ParkingUnavailable:
            return  # not finished: the cancel comes again after a restart
        self._offsets.finish(partition, offset)

    def finish(self, work: Work) -> None:
        self.works.pop(work.command.request_id, None)
        if work.parked:
            self._in_background(self._unpark(work))
        else:
            self._offsets.finish(work.partition, work.offset)

    def drop(self, partitions: set[TopicPartition]) -> list[Work]:
        """Forget the commands of partitions that went to another replica; returns them."""
        self.takeover.drop(partitions)
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
