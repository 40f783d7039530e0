"""Status side of the API: read-your-writes, long-poll wake-ups, reads.

``RecentCommands`` remembers the commands this instance accepted until the tracker has
recorded them (the request path never waits for the database), so the status URL answers
as soon as the 202 is out.

``StatusNotifier`` wakes long-poll waiters. Waiting holds no database connection: a
waiter sleeps on an ``asyncio.Event`` set by this process's tracker and sweeper; with
several API instances another instance's tracker may apply the event, so a waiter also
re-reads the store every ``LONG_POLL_RECHECK_SECONDS`` (a bounded, slow check).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from preservarium_pusher_api.core.contract import CommandStatus
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.services.idempotency import IdempotencyService
from preservarium_pusher_api.store import (
    CommandRecord,
    Page,
    QueuedCommand,
    StatusStore,
    decode_cursor,
    encode_cursor,
    record_of_queued,
)

log = get_logger(__name__)


class RecentCommands:
    """Read-your-writes: the commands this instance accepted, until the store has them.

    The API does not write to the status store on the request path: the tracker records
    every command as ``queued`` from the commands topic (one batched write per fetch). Until
    its row is there, this bounded map answers for a command this instance accepted, so
    its status URL works as soon as the 202 is out. An entry leaves when a read finds the
    row in the store, or, oldest first, when ``capacity`` is exceeded (a command evicted
    before the tracker recorded it reads 404 on this instance only until the tracker
    catches up).
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, QueuedCommand] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, rows: Iterable[QueuedCommand]) -> None:
        """Remember accepted commands (never blocks, never raises)."""
        items = self._items
        for row in rows:
            items[row.request_id] = row
        while len(items) > self._capacity:
            items.popitem(last=False)

    def get(self, request_id: str) -> QueuedCommand | None:
        """A command accepted here, if the store may not have it yet."""
        return self._items.get(request_id)

    def forget(self, request_ids: Iterable[str]) -> None:
        """The store has these: it answers for them from now on."""
        for request_id in request_ids:
            self._items.pop(request_id, None)

    def matching(
        self,
        *,
        device_id: str | None,
        since: float | None,
        before: tuple[float, str] | None,
    ) -> list[QueuedCommand]:
        """Entries a listing of queued commands with these filters would hold."""
        found = []
        for row in self._items.values():
            if device_id is not None and row.device_id != device_id:
                continue
            if since is not None and row.created_at < since:
                continue
            if before is not None and (row.created_at, row.request_id) >= before:
                continue
            found.append(row)
        return found


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
    recent: RecentCommands
    notifier: StatusNotifier
    idempotency: IdempotencyService

    async def read(self, request_id: str) -> CommandRecord | None:
        """The stored command, or the one this instance accepted and the store lacks yet."""
        record = await self.store.get(request_id)
        if record is not None:
            self.recent.forget((request_id,))
            return record
        row = self.recent.get(request_id)
        return record_of_queued(row) if row is not None else None

    async def list(
        self,
        *,
        device_id: str | None = None,
        status: CommandStatus | None = None,
        since: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """A listing page of the store, with the commands accepted here and not stored yet
        merged in where they belong (they are ``queued``).

        Raises:
            InvalidCursorError: ``cursor`` was not issued by a listing.
        """
        before = decode_cursor(cursor) if cursor is not None else None
        candidates = (
            self.recent.matching(device_id=device_id, since=since, before=before)
            if len(self.recent) and status in (None, CommandStatus.QUEUED)
            else []
        )
        # Which of them the store has, asked before the page is read: a row written in
        # between is then in the page (and taken from there), never in neither.
        stored = await self.store.existing([row.request_id for row in candidates])
        self.recent.forget(stored)
        page = await self.store.list(
            device_id=device_id, status=status, since=since, limit=limit, cursor=cursor
        )
        listed = {record.request_id for record in page.items}
        extra = [
            record_of_queued(row)
            for row in candidates
            if row.request_id not in stored and row.request_id not in listed
        ]
        if not extra:
            return page
        # The page ends where the store's next page starts; extra rows past that end
        # belong to later pages (they are found again there, by the cursor).
        end = decode_cursor(page.next_cursor) if page.next_cursor is not None else None
        if end is not None:
            extra = [r for r in extra if (r.created_at, r.request_id) > end]
        merged = sorted(
            [*page.items, *extra], key=lambda r: (r.created_at, r.request_id), reverse=True
        )
        items = merged[:limit]
        next_cursor = page.next_cursor
        if len(merged) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last.created_at, last.request_id)
        return Page(items, next_cursor)
