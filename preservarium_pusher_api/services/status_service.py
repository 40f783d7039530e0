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
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from preservarium_pusher_api.core.contract import CommandStatus
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.services.idempotency import IdempotencyService
from preservarium_pusher_api.store import (
    CommandRecord,
    QueuedCommand,
    StatusStore,
    record_of_queued,
)

log = get_logger(__name__)


class QueuedWriter:
    """Write-behind of ``queued`` rows, grouped into one transaction per flush.

    Recording does not wait for the database: the 202 goes out as soon as Kafka
    acknowledged the command, and the rows of every command accepted within
    ``flush_interval`` are written together. Until then :meth:`pending` answers for them,
    so this instance's status URL works at once. A failed write is retried; the tracker
    also creates rows from the connectors' events, so a lost write loses no status.
    """

    def __init__(
        self,
        store: StatusStore,
        metrics: PusherMetrics,
        *,
        flush_interval: float = 0.01,
        max_group: int = 1000,
        max_attempts: int = 5,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._flush_interval = flush_interval
        self._max_group = max_group
        self._max_attempts = max_attempts
        self._pending: dict[str, QueuedCommand] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background flusher."""
        self._task = asyncio.create_task(self._run(), name="queued-writer")

    def tasks(self) -> list[asyncio.Task[None]]:
        """Long-lived tasks to supervise."""
        return [self._task] if self._task is not None else []

    async def stop(self) -> None:
        """Write what is pending, then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            if not await self._flush(attempts=1):
                break

    def record(self, rows: Iterable[QueuedCommand]) -> None:
        """Queue rows for the next group write (never blocks, never raises)."""
        for row in rows:
            self._pending[row.request_id] = row
        self._wakeup.set()

    def pending(self, request_id: str) -> QueuedCommand | None:
        """A row accepted but not written yet."""
        return self._pending.get(request_id)

    async def flush(self) -> None:
        """Write everything pending now (used at shutdown and by tests)."""
        while self._pending:
            if not await self._flush(attempts=self._max_attempts):
                return

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(self._flush_interval)  # let concurrent requests join the group
            self._wakeup.clear()
            await self.flush()

    async def _flush(self, attempts: int) -> bool:
        group = list(itertools.islice(self._pending.values(), self._max_group))
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                await self._store.record_queued(group)
            except Exception as exc:  # the store must never fail an accepted command
                self._metrics.store_healthy.set(0)
                log.error(
                    "status store write failed",
                    error=type(exc).__name__,
                    rows=len(group),
                    attempt=attempt,
                )
                if attempt < attempts:
                    await asyncio.sleep(min(2.0**attempt * 0.1, 2.0))
                continue
            self._metrics.store_healthy.set(1)
            self._metrics.store_write_latency.labels("queued").observe(
                time.perf_counter() - started
            )
            for row in group:
                self._pending.pop(row.request_id, None)
            return True
        # Give up on this group; the tracker fills rows in from events that arrive.
        for row in group:
            self._pending.pop(row.request_id, None)
        return False


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
        read: Callable[[str], Awaitable[CommandRecord | None]],
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
                    return await read(request_id)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, recheck)):
                        await wakeup.wait()
                wakeup.clear()
                record = await read(request_id)
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

    async def read(self, request_id: str) -> CommandRecord | None:
        """The stored command, or the one this instance accepted but has not written yet."""
        # Pending first: a row leaves ``pending`` only after its write committed, so whichever
        # way a flush interleaves with this read, one of the two answers has it.
        row = self.writer.pending(request_id)
        record = await self.store.get(request_id)
        if record is None and row is not None:
            record = record_of_queued(row)
        return record
