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
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from sqlalchemy import and_, event, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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

        Three statements per batch, whatever its size: read the rows' ranks, one upsert
        of each command's furthest status (its ``WHERE status_rank <`` keeps the rule in
        SQL against concurrent writers: a row another tracker or the sweeper moved on in
        between is left alone), one insert of the history entries.
        """
        if not events:
            return []
        by_id: dict[str, list[StatusEvent]] = {}
        for item in events:
            by_id.setdefault(item.request_id, []).append(item)
        # Read before the write transaction (on SQLite a transaction that reads first
        # cannot become the writer if another wrote meanwhile); what changes in between
        # is caught by the upsert's condition.
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(
                    commands.c.request_id,
                    commands.c.status_rank,
                    commands.c.protocol,
                    commands.c.created_at,
                ).where(commands.c.request_id.in_(list(by_id)))
            )
            known = {row.request_id: row for row in rows}
        plans = [_plan(items, known.get(request_id)) for request_id, items in by_id.items()]
        async with self.engine.begin() as conn:
            # One lock order for every writer (request_id), so two trackers never deadlock.
            plans.sort(key=lambda plan: plan.request_id)
            upserts = [plan.row for plan in plans if plan.row is not None]
            written: set[str] = set()
            if upserts:
                insert = self._insert(commands)
                excluded = insert.excluded
                statement = insert.on_conflict_do_update(
                    index_elements=[commands.c.request_id],
                    set_={
                        "status": excluded.status,
                        "status_rank": excluded.status_rank,
                        "detail": excluded.detail,
                        "result": excluded.result,
                        "updated_at": excluded.updated_at,
                        "sent_at": func.coalesce(excluded.sent_at, commands.c.sent_at),
                    },
                    where=commands.c.status_rank < excluded.status_rank,
                ).returning(commands.c.request_id)
                result = await conn.execute(statement, upserts)
                written = {row.request_id for row in result}
            entries: list[dict[str, Any]] = []
            applied: list[Transition] = []
            for plan in plans:
                moved = plan.row is None or plan.request_id in written
                if moved:
                    applied += plan.transitions
                    entries += plan.history
                else:  # moved on meanwhile: the terminal entries are no longer first
                    entries += [e for e in plan.history if not e["terminal"]]
            if entries:
                await conn.execute(
                    self._insert(history).on_conflict_do_nothing(),
                    [{k: v for k, v in e.items() if k != "terminal"} for e in entries],
                )
        return applied

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
                            commands.c.request_id,
                            commands.c.device_id,
                            commands.c.protocol,
                            commands.c.created_at,
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
                    Transition(
                        row.request_id,
                        status,
                        row.protocol,
                        row.created_at,
                        now,
                        row.device_id,
                        reason,
                    )
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


@dataclass(slots=True)
class _Plan:
    """What one batch does to one command: the row to upsert (None: nothing moves), the
    transitions it makes, the history entries it adds."""

    request_id: str
    row: dict[str, Any] | None
    transitions: list[Transition]
    history: list[dict[str, Any]]


def _plan(items: list[StatusEvent], current: Any) -> _Plan:
    """Walk one command's events in order against its current rank (None: no row)."""
    rank = None if current is None else current.status_rank
    protocol = None if current is None else current.protocol
    created_at = None if current is None else current.created_at
    row: dict[str, Any] | None = None
    transitions: list[Transition] = []
    entries: list[dict[str, Any]] = []
    terminal_rank = CommandStatus.SUCCEEDED.rank
    for item in items:
        at = to_epoch(item.occurred_at)
        event_rank = item.status.rank
        if rank is None or event_rank > rank:
            if created_at is None:
                created_at = at
            sent = event_rank in (CommandStatus.SENT.rank, CommandStatus.DELIVERED.rank)
            row = {
                "request_id": item.request_id,
                "device_id": item.device_id,
                "status": item.status.value,
                "status_rank": event_rank,
                "detail": item.detail,
                "result": item.result,
                "created_at": created_at,
                "updated_at": at,
                "sent_at": at if sent else (row["sent_at"] if row is not None else None),
            }
            transitions.append(Transition(item.request_id, item.status, protocol, created_at, at))
            rank = event_rank
        elif item.status.is_terminal and rank >= terminal_rank:
            log.info(
                "status event ignored: command already final",
                request_id=item.request_id,
                status=item.status.value,
                source=item.source,
            )
            continue
        entries.append(
            {
                "request_id": item.request_id,
                "status": item.status.value,
                "at": at,
                "source": item.source,
                "detail": _clip(item.detail),
                "terminal": item.status.is_terminal,
            }
        )
    return _Plan(items[0].request_id, row, transitions, entries)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers do not block the writer; NORMAL is durable across process crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
