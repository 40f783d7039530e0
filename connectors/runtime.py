"""The connector runtime: commands topic → per-device lanes → transport → results topic.

One consumer group per protocol (``pusher-connector-{protocol}``). Records of other
protocols are skipped by their ``protocol`` header without decoding the value. Each
device's commands run in order in its own lane; lanes run in parallel. An offset is
committed only when every record before it in the partition is finished (see
``offsets.py``), so a crash re-delivers instead of losing; the sent-command journal in
Kafka (``journal.py``) keeps a re-delivered command from reaching a device twice, whichever
replica owns the partition next.

Device answers that arrive by subscription (MQTT) reach every replica, and every replica
reports what it reads. The replica that sent the command releases its lane with it; the
others' reports are duplicates the tracker ignores (statuses only move forward, the first
terminal one wins). Reporting only from the owner would lose an answer whenever the owner
died or restarted between the device's answer and its report, which replicas restarting
one after the other make likely; an answer costs one more status event per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from connectors.dispatcher import Dispatcher
from connectors.ingress import Refusals
from connectors.intake import RecordIntake
from connectors.journal import SentJournal
from connectors.lanes import DeviceLane
from connectors.observability import ConnectorMetrics, health_app, serve_health
from connectors.offsets import OffsetBook
from connectors.parking import ParkingLot
from connectors.parsers import DeviceAnswer, Parser, load_parser
from connectors.registry import DeviceRegistry
from connectors.reporter import Reporter
from connectors.settings import ConnectorSettings
from connectors.transport import Transport
from connectors.work import Stage, Work
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.kafka import consumer_options
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.core.supervision import check_alive, run_supervised

log = get_logger(__name__)

_LAG_EVERY_SECONDS = 5.0


def group_id(protocol: str) -> str:
    """The consumer group of a protocol's connectors."""
    return f"pusher-connector-{protocol}"


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runtime: ConnectorRuntime) -> None:
        self._runtime = runtime

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._runtime.hand_back(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._runtime.took_over(assigned)
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))


class ConnectorRuntime:
    """Runs one transport as a connector until ``stop()``; see the module docstring."""

    def __init__(
        self,
        settings: ConnectorSettings,
        transport: Transport,
        *,
        group: str | None = None,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.protocol = transport.protocol.value
        self.group = group or settings.connector_group_id or group_id(self.protocol)
        self.metrics = ConnectorMetrics(self.protocol)
        self.refusals = Refusals(self.metrics.rejected_messages, self.protocol)
        self.registry = DeviceRegistry(
            settings.device_registry_path, settings.registry_reload_seconds
        )
        self.journal = SentJournal(settings, self.protocol)
        self.lot = ParkingLot(settings, self.protocol)
        self.reporter = Reporter(settings, transport.protocol)
        self.offsets = OffsetBook()
        self.intake = RecordIntake(
            self.protocol,
            self.offsets,
            self.metrics,
            self.reporter,
            self.journal,
            self.lot,
            settings,
        )
        self.dispatcher = Dispatcher(
            settings,
            transport,
            self.registry,
            self.reporter,
            self.metrics,
            self.journal,
            self.intake.finish,
            self.intake.park,
        )
        self.intake.bind(self.dispatcher)
        self._presence: dict[str, tuple[bool | None, float]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._commit_now = asyncio.Event()
        self._connections = 0
        self.consuming = asyncio.Event()
        transport.bind(self)

    @property
    def works(self) -> dict[str, Work]:
        """Commands taken from Kafka and not finished, by request_id."""
        return self.intake.works

    @property
    def lanes(self) -> dict[str, DeviceLane]:
        """Device lanes with commands, by device_id."""
        return self.intake.lanes

    # -- life cycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the runtime to stop (SIGTERM): no more fetching, hand back, commit, exit."""
        self._stopping.set()

    async def run(self) -> None:
        """Run until ``stop()``; returns after a graceful shutdown.

        Raises:
            TaskDied: a helper task (transport, registry watch, deadlines, commits) ended;
                the process exits non-zero to be restarted (crash-only).
        """
        self.registry.load()
        app = health_app(self.metrics, self.health)
        async with serve_health(
            app, self.settings.connector_metrics_host, self.settings.connector_metrics_port
        ):
            if not self.settings.connector_id_configured:
                log.warning(
                    "CONNECTOR_ID not set: a name for this run only; set it to keep the "
                    "MQTT session across restarts",
                    connector_id=self.settings.connector_id,
                )
            await self.reporter.start(self._stopping)
            helpers = [
                asyncio.create_task(self.transport.run(), name="transport"),
                asyncio.create_task(self.registry.watch(), name="registry-watch"),
                asyncio.create_task(self._reap_forever(), name="deadlines"),
            ]
            try:
                await run_supervised(self._consume_forever(), helpers)
            finally:
                await self._shutdown(helpers)

    async def _finish_sending(self) -> None:
        """Stop taking commands to devices; let those being sent finish (bounded)."""
        self.dispatcher.stopping = True
        for lane in self.lanes.values():
            lane.wake()
        deadline = time.monotonic() + self.settings.connector_shutdown_grace_seconds
        sending = [w for w in self.works.values() if w.stage in (Stage.SENDING, Stage.SENT)]
        if sending:
            log.info("waiting for commands being sent", count=len(sending))
        # polls a handful of states, bounded by the grace period
        while time.monotonic() < deadline and (  # noqa: ASYNC110
            any(w.stage in (Stage.SENDING, Stage.SENT) for w in sending) or self.intake.background
        ):
            await asyncio.sleep(0.05)

    async def _shutdown(self, helpers: list[asyncio.Task[Any]]) -> None:
        self.dispatcher.stopping = True
        await self.reporter.stop(self.settings.connector_shutdown_grace_seconds)
        for task in helpers:
            task.cancel()
        for lane in list(self.lanes.values()):
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await self.intake.takeover.stop()
        await self.journal.stop()
        log.info("connector stopped", protocol=self.protocol)

    def health(self) -> dict[str, Any]:
        """State for ``GET /health``."""
        ok = self.consuming.is_set() and self.transport.connected
        return {
            "ok": ok,
            "protocol": self.protocol,
            "kafka": "consuming" if self.consuming.is_set() else "not consuming",
            "transport": self.transport.health(),
            "in_flight": self.offsets.total_pending(),
            "devices_registered": len(self.registry),
            "registry_error": self.registry.last_error,
        }

    # -- Kafka ------------------------------------------------------------------------

    async def _consume_forever(self) -> None:
        # nothing is taken from the commands topic before the journal can be written
        await self.journal.start(self._stopping)
        await self._open_lot()
        attempt = 0
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(
                **consumer_options(self.settings, self.group),
                max_poll_records=500,
            )
            consumer.subscribe([self.settings.kafka_command_topic], listener=_Rebalance(self))
            try:
                # set first: the first assignment may come while start() runs
                self._consumer = consumer
                await consumer.start()
                log.info("connector consuming", topic=self.settings.kafka_command_topic)
                attempt = 0
                await self._consume(consumer)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("connector lost kafka; reconnecting", error=type(exc).__name__)
                attempt += 1
                await self._sleep(backoff_delay(attempt, 5.0))
            finally:
                self.consuming.clear()
                await self._commit(consumer)
                self._consumer = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 10)

    async def _open_lot(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            assert self.journal.producer is not None
            try:
                await self.lot.start(self.journal.producer)
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                attempt += 1
                log.warning("parking lot not ready; retrying", error=type(exc).__name__)
                await self._sleep(backoff_delay(attempt, 5.0))

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        committer = asyncio.create_task(self._commit_forever(consumer), name="commits")
        last_lag = 0.0
        try:
            while not self._stopping.is_set():
                # helpers of the consume loop; one that died unexpectedly ends the process
                check_alive([committer, *self.intake.failed, *self.journal.failed])
                self.intake.takeover.check()
                self._apply_backpressure(consumer)
                batches = await consumer.getmany(timeout_ms=100, max_records=500)
                self.consuming.set()
                for partition, records in batches.items():
                    # normally started by the assignment callback; never left waiting
                    self.intake.takeover.start(partition, consumer.committed)
                    for record in records:
                        self.intake.take(partition, record)
                self.metrics.in_flight.labels(self.protocol).set(self.offsets.total_pending())
                if time.monotonic() - last_lag > _LAG_EVERY_SECONDS:
                    last_lag = time.monotonic()
                    await self._update_lag(consumer)
            await self._finish_sending()
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        limit = self.settings.connector_max_pending_per_partition
        paused = consumer.paused()
        for partition in consumer.assignment():
            pending = self.offsets.pending(partition)
            if partition not in paused and pending >= limit:
                consumer.pause(partition)
            elif partition in paused and pending < limit // 2:
                consumer.resume(partition)

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        for partition in consumer.assignment():
            highwater = consumer.highwater(partition)
            if highwater is None:
                continue
            with contextlib.suppress(KafkaError, AssertionError):
                position = await consumer.position(partition)
                self.metrics.partition_lag.labels(self.protocol, str(partition.partition)).set(
                    max(0, highwater - position)
                )

    async def _commit_forever(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._commit_now.wait(), self.settings.connector_commit_interval_seconds
                )
            self._commit_now.clear()
            await self._commit(consumer)

    async def _commit(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition] | None = None
    ) -> None:
        positions = self.offsets.to_commit(partitions)
        if not positions:
            return
        try:
            await consumer.commit(positions)
        except (KafkaError, AssertionError) as exc:
            # not committed: those records come again (and the journal skips them)
            log.warning("offset commit failed", error=type(exc).__name__)
            return
        self.offsets.committed(positions)

    async def hand_back(self, revoked: list[TopicPartition]) -> None:
        """Partitions go to another instance: nothing more is sent from them; sends under
        way finish (within the grace period) and what is finished is committed; the rest
        is dropped here and delivered by the next owner, whom the journal tells what was
        already sent."""
        if not revoked:
            return
        revoked_set = set(revoked)
        for work in self.works.values():
            if work.partition in revoked_set and work.stage is Stage.WAITING:
                work.abandoned = True
                work.wake.set()
        deadline = time.monotonic() + self.settings.connector_shutdown_grace_seconds
        # polls a handful of states, bounded by the grace period
        while time.monotonic() < deadline and any(  # noqa: ASYNC110
            w.partition in revoked_set and w.stage is Stage.SENDING for w in self.works.values()
        ):
            await asyncio.sleep(0.02)
        if self._consumer is not None:
            await self._commit(self._consumer, revoked)
        dropped = self.intake.drop(revoked_set)
        # answers to what was sent are the next owner's to report
        self.dispatcher.release([work.command.request_id for work in dropped])
        self.offsets.forget(revoked)
        self.journal.drop([tp.partition for tp in revoked])
        log.info(
            "partitions handed back",
            partitions=sorted(tp.partition for tp in revoked),
            commands_left=len(dropped),
        )

    def took_over(self, assigned: list[TopicPartition]) -> None:
        """Partitions assigned: read back what earlier owners left before taking records."""
        consumer = self._consumer
        if consumer is None:
            return
        for partition in assigned:
            if partition.topic == self.settings.kafka_command_topic:
                self.intake.takeover.start(partition, consumer.committed)

    # -- what devices say (DeviceEvents) ----------------------------------------------

    def device_answered(self, device_id: str, answer: DeviceAnswer) -> None:
        """A device answered: report it, and let the lane that waits for it go on."""
        self.device_presence(device_id, None, None)
        self.dispatcher.device_answered(device_id, answer)

    def device_presence(self, device_id: str, online: bool | None, detail: str | None) -> None:
        """Presence changes go to the presence topic; heartbeats at most every N seconds."""
        previous, emitted_at = self._presence.get(device_id, (None, 0.0))
        state = previous if online is None else online
        now = time.monotonic()
        changed = online is not None and online != previous
        if changed or now - emitted_at >= self.transport.presence_heartbeat_seconds:
            self._presence[device_id] = (state, now)
            self.reporter.presence_later(device_id, state, detail)
            if changed:
                log.info("device presence", device_id=device_id, online=state)
        lane = self.lanes.get(device_id)
        if lane is not None and changed:
            lane.wake()

    def device_online(self, device_id: str) -> bool | None:
        """What the device last said: True online, False offline, None never heard."""
        return self._presence.get(device_id, (None, 0.0))[0]

    def device_parser(self, device_id: str) -> Parser:
        """The parser for a device's answers: its registry parser or the default."""
        device = self.registry.get(device_id)
        return load_parser((device.parser if device else None) or self.transport.default_parser)

    def answer_invalid(self, device_id: str) -> None:
        """Count an answer the parser could not read."""
        self.metrics.device_answers.labels(self.protocol, "invalid").inc()

    def message_refused(self, reason: str, topic: str, error: BaseException) -> None:
        """Count a device message dropped unread; log the reason now and then."""
        self.refusals.refused(reason, topic, error)

    def transport_state(self, connected: bool) -> None:
        """The transport (re)connected or lost its connection."""
        self.metrics.transport_connected.labels(self.protocol).set(1 if connected else 0)
        if connected:
            self._connections += 1
            if self._connections > 1:
                self.metrics.reconnects.labels(self.protocol).inc()
            for lane in self.lanes.values():
                lane.wake()

    # -- deadlines --------------------------------------------------------------------

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self.dispatcher.reap_deadlines()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
