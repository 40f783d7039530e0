"""Delivering one command: checks, dispatch policy, retries, answers and deadlines.

The ``Dispatcher`` does the work for the head command of each device lane. The rules that
keep physical actions safe live here:

* a command is only sent again when the transport says nothing left the process;
* a request_id already handed to a device (by this process or, per the journal in Kafka,
  by any earlier owner of the partition) is not sent again;
* a command past ``expires_at`` is reported ``expired`` and not sent;
* a cancelled command is dropped before it is sent;
* a device that refuses because it is busy is asked again later without counting it as
  a delivery attempt, until the command's timeout has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from connectors.errors import (
    CommandRejected,
    DeliveryTimedOut,
    DeliveryUncertain,
    DeviceBusy,
    TransportUnavailable,
)
from connectors.journal import JournalUnavailable, SentJournal
from connectors.observability import ConnectorMetrics
from connectors.parsers import DeviceAnswer, load_parser
from connectors.policy import resolve_policy
from connectors.registry import DeviceRegistry
from connectors.reporter import Reporter
from connectors.settings import ConnectorSettings
from connectors.transport import Delivery, Receipt, Transport
from connectors.work import PendingAnswer, Stage, Work
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.contract import (
    CommandMessage,
    CommandStatus,
    DispatchPolicy,
    utc_now,
)
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

_READY_RECHECK_SECONDS = 0.5
_FALLBACK_TIMEOUT_SECONDS = 300.0
_BUSY_RETRY_SECONDS = 0.5
_BUSY_RETRY_MAX_SECONDS = 10.0


class Dispatcher:
    """Delivers commands through one transport and reports what happened."""

    def __init__(
        self,
        settings: ConnectorSettings,
        transport: Transport,
        registry: DeviceRegistry,
        reporter: Reporter,
        metrics: ConnectorMetrics,
        journal: SentJournal,
        finish: Callable[[Work], None],
        park: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._registry = registry
        self._reporter = reporter
        self._metrics = metrics
        self._journal = journal
        self._finish = finish
        self._park = park
        self._slots = asyncio.Semaphore(settings.connector_max_in_flight)
        self.pending: dict[str, PendingAnswer] = {}
        self.stopping = False

    # -- one command ------------------------------------------------------------------

    async def process(self, work: Work) -> None:
        """Handle the lane's head command; returns when the lane may move on."""
        command = work.command
        if work.abandoned or self.stopping:
            work.abandoned = True
            return
        if work.cancelled:
            self._done(work)  # cancelled was reported when the cancel arrived
            return
        if self._expired(command):
            await self._terminal(work, CommandStatus.EXPIRED, "expired before delivery")
            return
        partition = work.partition.partition
        if not self._journal.is_loaded(partition):
            await self._journal.ready(partition)
            if not self._journal.is_loaded(partition):  # the partition went elsewhere
                work.abandoned = True
                return
        if self._journal.sent(partition, command.request_id):
            self._metrics.outcome("duplicate")
            log.info(
                "command already handed to the device; not sent again",
                request_id=command.request_id,
                device_id=command.device_id,
            )
            # Its owner may have died before reporting it: say it was sent (statuses only
            # move forward, so this changes nothing if it was), and its answer or its
            # deadline ends it — never a command left queued forever.
            await self._reporter.emit(
                self._reporter.status_event(
                    command.request_id,
                    command.device_id,
                    CommandStatus.SENT,
                    "handed to the device earlier (sent-command journal); not sent again",
                )
            )
            self._done(work)
            return
        try:
            delivery, policy = self._prepare(command, work.traceparent)
        except CommandRejected as exc:
            await self._terminal(work, CommandStatus.FAILED, exc.message)
            return
        if policy is DispatchPolicy.BURST:
            if await self._hold(work, delivery):
                task = asyncio.create_task(self._send_guarded(work, delivery, policy))
                task.add_done_callback(_log_failure)
            return
        if await self._hold(work, delivery):
            await self._send(work, delivery, policy)

    async def _send_guarded(self, work: Work, delivery: Delivery, policy: DispatchPolicy) -> None:
        """``_send`` on its own task (burst): an unexpected error ends the command ``failed``
        with the reason and frees its offset, as a lane does for its head command."""
        try:
            await self._send(work, delivery, policy)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the command (and its offset) pending
            log.exception(
                "command delivery failed",
                request_id=work.command.request_id,
                device_id=work.command.device_id,
                error=type(exc).__name__,
            )
            await self.fail(work, f"connector error: {type(exc).__name__}")

    def _prepare(
        self, command: CommandMessage, traceparent: str | None = None
    ) -> tuple[Delivery, DispatchPolicy]:
        device = self._registry.get(command.device_id)
        if device is None and (
            self._transport.requires_registration or self._settings.connector_require_registration
        ):
            raise CommandRejected(f"unknown device {command.device_id!r}: not in the registry")
        if device is not None and device.protocol != self._transport.protocol:
            raise CommandRejected(
                f"device {command.device_id!r} is registered for {device.protocol.value}, "
                f"not {self._transport.protocol.value}"
            )
        target = self._transport.target(command, device)
        parser = load_parser(
            command.parser_script_ref
            or (device.parser if device else None)
            or self._transport.default_parser
        )
        try:
            frame = parser.encode(command)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise CommandRejected(f"parser could not encode the command: {exc}") from exc
        timeout = (
            command.timeout_seconds
            or (device.timeout_seconds if device else None)
            or self._settings.default_timeout_seconds
            or _FALLBACK_TIMEOUT_SECONDS
        )
        policy = resolve_policy(command, device, self._default_policy())
        delivery = Delivery(command, frame, target, parser, device, timeout, traceparent)
        return delivery, policy

    def _default_policy(self) -> DispatchPolicy:
        return self._settings.connector_default_dispatch or self._transport.default_dispatch

    async def _hold(self, work: Work, delivery: Delivery) -> bool:
        """Wait until the device may be sent to; False when the command ended meanwhile."""
        command = work.command
        held_since: float | None = None
        while True:
            if work.abandoned or self.stopping:
                work.abandoned = True  # left uncommitted: the next owner delivers it
                return False
            if work.cancelled:
                self._done(work)  # cancelled was reported when the cancel arrived
                return False
            if self._expired(command):
                await self._terminal(work, CommandStatus.EXPIRED, "expired before delivery")
                return False
            if self._transport.ready(command.device_id):
                await self._slots.acquire()
                if work.cancelled or work.abandoned:
                    self._slots.release()
                    continue
                return True
            held_since = held_since or time.monotonic()
            park_after = self._settings.connector_park_after_seconds
            if (
                self._park is not None
                and park_after is not None
                and not work.parked
                and time.monotonic() - held_since >= park_after
            ):
                self._park(command.device_id)  # the commit moves on while it waits
            work.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(work.wake.wait(), self._recheck_after(command))

    async def _send(self, work: Work, delivery: Delivery, policy: DispatchPolicy) -> None:
        """Hand the command to the transport (a slot is held on entry), then wait per policy."""
        attempt = 0
        busy_since: float | None = None
        while True:
            try:
                outcome = await self._attempt(work, delivery, policy)
            finally:
                self._slots.release()
            if isinstance(outcome, DeviceBusy):
                # Refused before running anything: wait for the device, do not count it.
                now = time.monotonic()
                busy_since = busy_since if busy_since is not None else now
                if now - busy_since >= delivery.timeout_seconds:
                    await self._terminal(
                        work,
                        CommandStatus.FAILED,
                        f"device stayed busy for {now - busy_since:.0f} s: {outcome.message}",
                    )
                    return
                self._metrics.busy_retries.labels(self._transport.protocol.value).inc()
                delay = outcome.retry_after or _BUSY_RETRY_SECONDS
                await self._backoff(work, min(delay, _BUSY_RETRY_MAX_SECONDS), outcome.message)
                if not await self._hold(work, delivery):
                    return
                continue
            if isinstance(outcome, TransportUnavailable):
                attempt += 1
                if attempt >= self._settings.connector_retry_max_attempts:
                    await self._terminal(
                        work,
                        CommandStatus.FAILED,
                        f"not delivered after {attempt} attempts: {outcome.message}",
                    )
                    return
                self._metrics.retries.labels(self._transport.protocol.value).inc()
                delay = backoff_delay(attempt, self._settings.connector_retry_max_backoff_seconds)
                await self._backoff(work, delay, outcome.message, attempt)
                if not await self._hold(work, delivery):
                    return
                continue
            if outcome is None:
                return
            receipt, sent_report, pending = outcome
            break
        self._after_send(work, receipt, sent_report)
        if pending.waiter is not None:
            await pending.waiter

    async def _attempt(
        self, work: Work, delivery: Delivery, policy: DispatchPolicy
    ) -> tuple[Receipt | None, asyncio.Task[None], PendingAnswer] | TransportUnavailable | None:
        """One hand-over; TransportUnavailable to retry, None when the command ended."""
        command = work.command
        request_id = command.request_id
        partition = work.partition.partition
        work.stage = Stage.SENDING
        try:
            # durable before the command leaves: no later owner sends it again
            await self._journal.remember(partition, request_id)
        except JournalUnavailable as exc:
            work.stage = Stage.WAITING
            return TransportUnavailable(f"sent-command journal not written: {exc}")
        pending = self._expect_answer(command, delivery.timeout_seconds, policy)
        sent_report: asyncio.Task[None] | None = None
        try:
            receipt_future = self._transport.submit(delivery)
            sent_report = self._reporter.emit_later(
                self._reporter.status_event(request_id, command.device_id, CommandStatus.SENT)
            )
            work.last_status = CommandStatus.SENT
            return await receipt_future, sent_report, pending
        except TransportUnavailable as exc:
            # nothing left the process: safe to send again later
            self.pending.pop(request_id, None)
            work.stage = Stage.WAITING
            await self._journal.forget(partition, request_id)
            if sent_report is not None:
                await sent_report
            return exc
        except DeliveryTimedOut as exc:
            self._time_out(request_id, detail=exc.message)
            assert sent_report is not None
            return None, sent_report, pending
        except DeliveryUncertain as exc:
            self._metrics.outcome("uncertain")
            log.warning(
                "delivery not confirmed; not sending again",
                request_id=request_id,
                device_id=command.device_id,
                reason=exc.message,
            )
            assert sent_report is not None
            return None, sent_report, pending
        except CommandRejected as exc:
            self.pending.pop(request_id, None)
            if sent_report is not None:
                await sent_report
            await self._terminal(work, CommandStatus.FAILED, exc.message)
            return None

    async def _backoff(self, work: Work, delay: float, reason: str, attempt: int = 0) -> None:
        log.info(
            "not delivered; retrying",
            request_id=work.command.request_id,
            device_id=work.command.device_id,
            attempt=attempt or None,
            reason=reason[:200],
            delay=round(delay, 2),
        )
        work.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work.wake.wait(), delay)

    def _after_send(
        self, work: Work, receipt: Receipt | None, sent_report: asyncio.Task[None]
    ) -> None:
        command = work.command
        work.stage = Stage.SENT
        reports = [sent_report]
        if receipt is not None and receipt.acknowledged:
            self._metrics.outcome("delivered")
            self._metrics.delivery_latency.labels(self._transport.protocol.value).observe(
                time.perf_counter() - work.taken_at
            )
            work.last_status = CommandStatus.DELIVERED
            reports.append(
                self._reporter.emit_later(
                    self._reporter.status_event(
                        command.request_id, command.device_id, CommandStatus.DELIVERED
                    )
                )
            )
        if receipt is not None and receipt.answer is not None:
            self.device_answered(command.device_id, receipt.answer)
        # The lane goes on now; the offset is finished once Kafka has the reports.
        reported = asyncio.gather(*reports)
        reported.add_done_callback(lambda done: None if done.cancelled() else self._done(work))

    def _expect_answer(
        self, command: CommandMessage, timeout: float, policy: DispatchPolicy
    ) -> PendingAnswer:
        now = time.monotonic()
        waiter = (
            asyncio.get_running_loop().create_future()
            if policy is DispatchPolicy.ON_RESULT
            else None
        )
        pending = PendingAnswer(command.device_id, now, now + timeout, timeout, waiter)
        self.pending[command.request_id] = pending
        return pending

    # -- answers and deadlines --------------------------------------------------------

    def release(self, request_ids: list[str]) -> None:
        """Stop waiting for these answers without reporting (their partition went to
        another replica, which reports what the device says)."""
        for request_id in request_ids:
            pending = self.pending.pop(request_id, None)
            if pending is not None and pending.waiter is not None and not pending.waiter.done():
                pending.waiter.set_result(None)

    def device_answered(self, device_id: str, answer: DeviceAnswer) -> None:
        """Report a device's answer as the command's terminal status."""
        pending = self.pending.get(answer.request_id)
        if pending is not None and pending.device_id != device_id:
            log.warning(
                "answer from another device ignored",
                request_id=answer.request_id,
                device_id=device_id,
            )
            return
        self.pending.pop(answer.request_id, None)
        if pending is not None:
            self._metrics.outcome("succeeded" if answer.ok else "failed")
            self._metrics.device_answers.labels(
                self._transport.protocol.value, "success" if answer.ok else "error"
            ).inc()
            self._metrics.answer_latency.labels(self._transport.protocol.value).observe(
                time.monotonic() - pending.sent_at
            )
        else:  # sent by another replica (or before a restart): reported all the same
            self._metrics.device_answers.labels(self._transport.protocol.value, "unclaimed").inc()
        status = CommandStatus.SUCCEEDED if answer.ok else CommandStatus.FAILED
        self._reporter.emit_later(
            self._reporter.status_event(
                answer.request_id, device_id, status, detail=answer.error, result=answer.result
            )
        )
        if pending is not None and pending.waiter is not None and not pending.waiter.done():
            pending.waiter.set_result(None)

    def reap_deadlines(self) -> int:
        """Report ``timed_out`` for every command whose answer is overdue; returns how many."""
        now = time.monotonic()
        overdue = [rid for rid, p in self.pending.items() if p.deadline <= now]
        for request_id in overdue:
            self._time_out(request_id)
        return len(overdue)

    def _time_out(self, request_id: str, detail: str | None = None) -> None:
        """Report ``timed_out`` for a command awaiting its answer, and stop waiting."""
        pending = self.pending.pop(request_id, None)
        if pending is None:
            return
        self._metrics.outcome("timed_out")
        self._reporter.emit_later(
            self._reporter.status_event(
                request_id,
                pending.device_id,
                CommandStatus.TIMED_OUT,
                detail=detail or f"no answer within {pending.timeout:g} s",
            )
        )
        if pending.waiter is not None and not pending.waiter.done():
            pending.waiter.set_result(None)

    # -- helpers ----------------------------------------------------------------------

    async def _terminal(self, work: Work, status: CommandStatus, detail: str) -> None:
        command = work.command
        self._metrics.outcome(status.value)
        log.info(
            "command ended before delivery",
            request_id=command.request_id,
            device_id=command.device_id,
            status=status.value,
            reason=detail,
        )
        work.last_status = status
        await self._reporter.emit(
            self._reporter.status_event(command.request_id, command.device_id, status, detail)
        )
        self._done(work)

    async def fail(self, work: Work, detail: str) -> None:
        """End a command ``failed`` after an unexpected error and free its offset; it is
        never sent again (if it reached the device, a late answer no longer counts)."""
        if work.stage is Stage.DONE:
            return
        pending = self.pending.pop(work.command.request_id, None)
        if pending is not None and pending.waiter is not None and not pending.waiter.done():
            pending.waiter.set_result(None)  # an on_result lane waiting on it goes on
        await self._terminal(work, CommandStatus.FAILED, detail)

    def _done(self, work: Work) -> None:
        work.stage = Stage.DONE
        self._finish(work)

    @staticmethod
    def _expired(command: CommandMessage) -> bool:
        return command.expires_at is not None and command.expires_at <= utc_now()

    @staticmethod
    def _recheck_after(command: CommandMessage) -> float:
        if command.expires_at is None:
            return _READY_RECHECK_SECONDS
        remaining = (command.expires_at - utc_now()).total_seconds()
        return max(0.001, min(_READY_RECHECK_SECONDS, remaining))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("delivery task failed", error=type(exc).__name__, detail=str(exc)[:200])
