"""Status store: what became of every command, on SQLite (default) or PostgreSQL.

SQLAlchemy 2 Core on an async engine (aiosqlite or asyncpg). Every write respects the
lifecycle: a row's status only moves forward (``status_rank`` grows), the first terminal
status wins, and an event that arrives before the API recorded ``queued`` creates the row
instead of being lost. The tables are in ``schema``, their migrations in ``migrate``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
from sqlalchemy import and_, event, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from preservarium_pusher_api.core.contract import CommandStatus, StatusEvent
from preservarium_pusher_api.core.errors import ConfigurationError
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.store.devices import DeviceDirectory
from preservarium_pusher_api.store.idempotency import IdempotencyKeys
from preservarium_pusher_api.store.migrate import upgrade
from preservarium_pusher_api.store.progress import TrackerProgress
from preservarium_pusher_api.store.records import (
    API_SOURCE,
    SWEEPER_SOURCE,
    CommandRecord,
    HistoryEntry,
    Page,
    QueuedCommand,
    Transition,
    decode_cursor,
    encode_cursor,
    record_from_row,
    to_epoch,
)
from preservarium_pusher_api.store.schema import DETAIL_MAX_CHARS, commands, history

log = get_logger(__name__)

# What a database that is down or gone raises: SQLAlchemy wraps most driver errors, but not
# those of opening a connection (asyncpg's own errors, refused sockets).
STORE_ERRORS: Final = (SQLAlchemyError, asyncpg.PostgresError, sqlite3.Error, OSError)


def _clip(detail: str | None) -> str:
    return (detail or "")[:DETAIL_MAX_CHARS]


def normalise_url(url: str) -> str:
    """Pick the async driver for a plain database URL (``postgresql://`` → asyncpg)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername != "postgresql+asyncpg":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite" and parsed.drivername != "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend not in ("postgresql", "sqlite"):
        raise ConfigurationError(f"STATUS_STORE_URL: unsupported database {backend!r}")
    return parsed.render_as_string(hide_password=False)


class StatusStore:
    """Lifecycle-aware writes and the queries behind the status API, on one engine.

    Idempotency claims (``idempotency_keys``) and device presence (``devices``) share the
    engine and live in their own modules.
    """

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = normalise_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        options: dict[str, Any] = {"pool_pre_ping": True}
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:"):
                raise ConfigurationError("STATUS_STORE_URL: SQLite needs a file path")
            options["connect_args"] = {"timeout": 30}
        else:
            options.update(pool_size=pool_size, max_overflow=pool_size)
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self.idempotency_keys = IdempotencyKeys(self.engine, self._insert)
        self.devices = DeviceDirectory(self.engine, self._insert)
        self.progress = TrackerProgress(self.engine, self._insert)

    @property
    def insert(self) -> Any:
        """The dialect's INSERT construct (with ON CONFLICT support)."""
        return self._insert

    def describe(self) -> str:
        """The URL without its password, for logs and status."""
        return make_url(self.url).render_as_string(hide_password=True)

    async def start(self) -> None:
        """Bring the schema to this version's head revision (see ``migrate``).

        Raises:
            ConfigurationError: the store was written by a newer version of the service.
        """
        await upgrade(self.engine)

    async def stop(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    async def ping(self) -> bool:
        """True when a trivial query succeeds."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except STORE_ERRORS:
            return False
        return True

    # -- writes -----------------------------------------------------------------------

    async def record_queued(self, items: Sequence[QueuedCommand]) -> None:
        """Record accepted commands (one transaction for the group).

        An existing row (an event arrived first) keeps its status; it only gains the
        command's description. The ``queued`` history entry is not stored: it is the row's
        own ``created_at`` (see :meth:`get`), which halves the write.
        """
        if not items:
            return
        rows = [
            {
                "request_id": item.request_id,
                "device_id": item.device_id,
                "protocol": item.protocol,
                "command_type": item.command_type,
                "status": CommandStatus.QUEUED.value,
                "status_rank": CommandStatus.QUEUED.rank,
                "created_at": item.created_at,
                "updated_at": item.created_at,
                "expires_at": item.expires_at,
                "timeout_seconds": item.timeout_seconds,
            }
            for item in items
        ]
        upsert = self._insert(commands)
        upsert = upsert.on_conflict_do_update(
            index_elements=[commands.c.request_id],
            set_={
                name: upsert.excluded[name]
                for name in (
                    "device_id",
                    "protocol",
                    "command_type",
                    "created_at",
                    "expires_at",
                    "timeout_seconds",
                )
            },
        )
        async with self.engine.begin() as conn:
            await conn.execute(upsert, rows)

    async def apply_events(self, events: Sequence[StatusEvent]) -> list[Transition]:
        """Apply status events in one transaction; return the transitions that happened.

        Rules: forward only; the first terminal status wins; a duplicate event (same
        status, source and detail) is ignored; a late non-terminal event is kept in the
        history without moving the status; a terminal event after another terminal one
        is dropped.
        """
        applied: list[Transition] = []
        async with self.engine.begin() as conn:
            for item in events:
                transition = await self._apply(conn, item)
                if transition is not None:
                    applied.append(transition)
        return applied

    async def _apply(self, conn: AsyncConnection, item: StatusEvent) -> Transition | None:
        at = to_epoch(item.occurred_at)
        rank = item.status.rank
        sent_at = at if rank in (CommandStatus.SENT.rank, CommandStatus.DELIVERED.rank) else None
        created = await conn.execute(
            self._insert(commands)
            .values(
                request_id=item.request_id,
                device_id=item.device_id,
                status=item.status.value,
                status_rank=rank,
                detail=item.detail,
                result=item.result,
                created_at=at,
                updated_at=at,
                sent_at=sent_at,
            )
            .on_conflict_do_nothing()
        )
        transition: Transition | None = None
        if created.rowcount:
            transition = Transition(item.request_id, item.status, None, at, at)
        else:
            moved = (
                await conn.execute(
                    update(commands)
                    .where(commands.c.request_id == item.request_id)
                    .where(commands.c.status_rank < rank)
                    .values(
                        status=item.status.value,
                        status_rank=rank,
                        detail=item.detail,
                        result=item.result,
                        updated_at=at,
                        sent_at=commands.c.sent_at if sent_at is None else sent_at,
                    )
                    .returning(commands.c.protocol, commands.c.created_at)
                )
            ).first()
            if moved is not None:
                transition = Transition(
                    item.request_id, item.status, moved.protocol, moved.created_at, at
                )
            elif item.status.is_terminal:
                log.info(
                    "status event ignored: command already final",
                    request_id=item.request_id,
                    status=item.status.value,
                    source=item.source,
                )
                return None
        await conn.execute(
            self._insert(history)
            .values(
                request_id=item.request_id,
                status=item.status.value,
                at=at,
                source=item.source,
                detail=_clip(item.detail),
            )
            .on_conflict_do_nothing()
        )
        return transition

    async def add_note(self, request_id: str, status: CommandStatus, detail: str) -> None:
        """Add a history entry without changing the status (e.g. a cancel request)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                self._insert(history)
                .values(
                    request_id=request_id,
                    status=status.value,
                    at=time.time(),
                    source=API_SOURCE,
                    detail=_clip(detail),
                )
                .on_conflict_do_nothing()
            )

    async def sweep(
        self, now: float | None = None, grace: float = 0.0, read_until: float | None = None
    ) -> list[Transition]:
        """Expire queued commands past ``expires_at``; time out sent ones past their deadline.

        Each row changes in one conditional UPDATE, so several sweepers never double-fire:
        only the one whose UPDATE matched the row records the transition. ``grace`` seconds
        are added to every deadline: the connector that holds the command decides first,
        and its events may still be on their way. ``read_until`` (the trackers' watermark,
        ``progress``) caps the deadlines decided: every event produced before it has been
        applied, so none of them can be overtaken.
        """
        now = time.time() if now is None else now
        deadline = (now if read_until is None else min(now, read_until)) - grace
        transitions: list[Transition] = []
        rules = [
            (
                CommandStatus.EXPIRED,
                and_(
                    commands.c.status_rank == CommandStatus.QUEUED.rank,
                    commands.c.expires_at.is_not(None),
                    commands.c.expires_at < deadline,
                ),
                "not delivered before expires_at",
            ),
            (
                CommandStatus.TIMED_OUT,
                and_(
                    or_(
                        commands.c.status_rank == CommandStatus.SENT.rank,
                        commands.c.status_rank == CommandStatus.DELIVERED.rank,
                    ),
                    commands.c.sent_at.is_not(None),
                    commands.c.timeout_seconds.is_not(None),
                    commands.c.sent_at + commands.c.timeout_seconds < deadline,
                ),
                "no result within timeout_seconds after it was sent",
            ),
        ]
        async with self.engine.begin() as conn:
            for status, condition, reason in rules:
                changed = (
                    await conn.execute(
                        update(commands)
                        .where(condition)
                        .values(
                            status=status.value,
                            status_rank=status.rank,
                            detail=reason,
                            updated_at=now,
                        )
                        .returning(
                            commands.c.request_id, commands.c.protocol, commands.c.created_at
                        )
                    )
                ).all()
                if not changed:
                    continue
                await conn.execute(
                    self._insert(history).on_conflict_do_nothing(),
                    [
                        {
                            "request_id": row.request_id,
                            "status": status.value,
                            "at": now,
                            "source": SWEEPER_SOURCE,
                            "detail": reason,
                        }
                        for row in changed
                    ],
                )
                transitions += [
                    Transition(row.request_id, status, row.protocol, row.created_at, now)
                    for row in changed
                ]
        return transitions

    # -- reads ------------------------------------------------------------------------

    async def get(self, request_id: str) -> CommandRecord | None:
        """The command with its history (oldest first), or None."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(commands).where(commands.c.request_id == request_id))
            ).first()
            if row is None:
                return None
            entries = (
                await conn.execute(
                    select(history.c.status, history.c.at, history.c.source, history.c.detail)
                    .where(history.c.request_id == request_id)
                    .order_by(history.c.at, history.c.id)
                )
            ).all()
        record = record_from_row(row)
        events = [
            HistoryEntry(entry.status, entry.at, entry.source, entry.detail or None)
            for entry in entries
        ]
        if record.protocol is not None:  # the API accepted it: its first entry is "queued"
            accepted = HistoryEntry(CommandStatus.QUEUED.value, record.created_at, API_SOURCE, None)
            events.insert(0, accepted)
            events.sort(key=lambda entry: entry.at)  # stable: "queued" first on a tie
        record.history = events
        return record

    async def existing(self, request_ids: Sequence[str]) -> set[str]:
        """Which of these request ids have a row."""
        if not request_ids:
            return set()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(commands.c.request_id).where(commands.c.request_id.in_(request_ids))
            )
            return {row.request_id for row in rows}

    async def list(
        self,
        *,
        device_id: str | None = None,
        status: CommandStatus | None = None,
        since: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first, keyset-paginated on (created_at, request_id).

        Raises:
            InvalidCursorError: ``cursor`` was not issued by :meth:`list`.
        """
        query = select(commands)
        if device_id is not None:
            query = query.where(commands.c.device_id == device_id)
        if status is not None:
            query = query.where(commands.c.status == status.value)
        if since is not None:
            query = query.where(commands.c.created_at >= since)
        if cursor is not None:
            created, request_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    commands.c.created_at < created,
                    and_(commands.c.created_at == created, commands.c.request_id < request_id),
                )
            )
        query = query.order_by(commands.c.created_at.desc(), commands.c.request_id.desc())
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit + 1))).all()
        items = [record_from_row(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last.created_at, last.request_id)
        return Page(items, next_cursor)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers do not block the writer; NORMAL is durable across process crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
