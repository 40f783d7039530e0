"""Status side of the API: grouped ``queued`` writes, long-poll wake-ups, reads.

``QueuedWriter`` collects the ``queued`` rows of concurrently accepted commands and writes
them in one transaction (group commit): each request waits for the write that holds its
row, so the status URL answers as soon as the 202 is out, while the database sees one
transaction per group instead of one per command.

``StatusNotifier`` wakes long-poll waiters. Waiting holds no database connection: a
waiter sleeps on an ``asyncio.Event`` set by this process's tracker and sweeper; with
several API instances another instance's tracker may apply the event, so a waiter also
re-reads the store every ``LONG_POLL_RECHECK_SECONDS`` (a bounded, slow check).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from preservarium_pusher_api.contract import CommandMessage, CommandStatus
from preservarium_pusher_api.services.idempotency import IdempotencyService
from preservarium_pusher_api.services.status_store import (
    CommandRecord,
    QueuedCommand,
    StatusStore,
    to_epoch,
)
from preservarium_pusher_api.utils.logging import get_logger
from preservarium_pusher_api.utils.metrics import PusherMetrics

log = get_logger(__name__)


def queued_row(message: CommandMessage) -> QueuedCommand:
    """The store row of a command Kafka acknowledged."""
    return QueuedCommand(
        request_id=message.request_id,
        device_id=message.device_id,
        protocol=message.protocol.value,
        command_type=message.command_type,
        created_at=to_epoch(message.created_at),
        expires_at=to_epoch(message.expires_at) if message.expires_at else None,
        timeout_seconds=message.timeout_seconds,
    )


class QueuedWriter:
    """Group commit of ``queued`` rows."""

    def __init__(self, store: StatusStore, metrics: PusherMetrics, max_group: int = 1000) -> None:
        self._store = store
        self._metrics = metrics
        self._max_group = max_group
        self._pending: list[tuple[QueuedCommand, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.healthy = True

    def start(self) -> None:
        """Start the background flusher."""
        self._task = asyncio.create_task(self._run(), name="queued-writer")

    async def stop(self) -> None:
        """Flush what is pending, then stop."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while self._pending:
            await self._flush()

    async def record(self, rows: Iterable[QueuedCommand]) -> None:
        """Queue rows for the next group write and wait until it is done.

        Never raises: the commands are already in Kafka, so a store failure is logged
        (and the tracker fills the rows in from the connectors' events).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        for row in rows:
            self._pending.append((row, future))
        self._wakeup.set()
        await asyncio.shield(future)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._flush()

    async def _flush(self) -> None:
        group, self._pending = self._pending[: self._max_group], self._pending[self._max_group :]
        started = time.perf_counter()
        try:
            await self._store.record_queued([row for row, _ in group])
            self.healthy = True
        except Exception as exc:  # the store must never fail an accepted command
            self.healthy = False
            log.error(
                "status store write failed; rows will be filled in from events",
                error=type(exc).__name__,
                rows=len(group),
            )
        finally:
            self._metrics.store_write_latency.labels("queued").observe(
                time.perf_counter() - started
            )
            for _, future in group:
                if not future.done():
                    future.set_result(None)


class StatusNotifier:
    """Wakes long-poll waiters of a request id when its status changes here."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def notify(self, request_ids: Iterable[str]) -> None:
        """Wake everyone waiting on these ids."""
        for request_id in request_ids:
            for waiter in self._waiters.get(request_id, ()):
                waiter.set()

    @property
    def waiting(self) -> int:
        """Number of requests currently waiting (for tests and metrics)."""
        return sum(len(events) for events in self._waiters.values())

    async def wait_for_change(
        self,
        store: StatusStore,
        request_id: str,
        seen: CommandStatus,
        wait_seconds: float,
        recheck: float,
    ) -> CommandRecord | None:
        """Wait until the status differs from ``seen`` (or is terminal), at most ``wait_seconds``.

        Returns the latest record (None only if it vanished). No connection is held while
        waiting; the store is read once per wake-up and at most every ``recheck`` seconds.
        """
        deadline = time.monotonic() + wait_seconds
        wakeup = asyncio.Event()
        self._waiters.setdefault(request_id, set()).add(wakeup)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return await store.get(request_id)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, recheck)):
                        await wakeup.wait()
                wakeup.clear()
                record = await store.get(request_id)
                if record is None or record.status != seen or record.status.is_terminal:
                    return record
        finally:
            waiters = self._waiters.get(request_id)
            if waiters is not None:
                waiters.discard(wakeup)
                if not waiters:
                    del self._waiters[request_id]


@dataclass(slots=True)
class StatusComponents:
    """What the status routes need, built once per app."""

    store: StatusStore
    writer: QueuedWriter
    notifier: StatusNotifier
    idempotency: IdempotencyService
