"""Status store: what became of every command, on SQLite (default) or PostgreSQL.

SQLAlchemy 2 Core on an async engine (aiosqlite or asyncpg). Times are stored as epoch
seconds (float) so that deadline arithmetic and keyset pagination are the same SQL on both
databases. Every write respects the lifecycle: a row's status only moves forward
(``status_rank`` grows), the first terminal status wins, and an event that arrives before
the API recorded ``queued`` creates the row instead of being lost.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    delete,
    event,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from preservarium_pusher_api.contract import CommandStatus, StatusEvent
from preservarium_pusher_api.core.exceptions import ConfigurationError
from preservarium_pusher_api.utils.logging import get_logger

log = get_logger(__name__)

SCHEMA_VERSION: Final = 2

# What a database that is down or gone raises: SQLAlchemy wraps most driver errors, but not
# those of opening a connection (asyncpg's own errors, refused sockets).
STORE_ERRORS: Final = (SQLAlchemyError, asyncpg.PostgresError, sqlite3.Error, OSError)
DETAIL_MAX_CHARS: Final = 500
API_SOURCE: Final = "api"
SWEEPER_SOURCE: Final = "sweeper"

metadata = MetaData()

schema_info = Table(
    "pusher_schema",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("version", Integer, nullable=False),
)

commands = Table(
    "pusher_commands",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("device_id", String(128), nullable=False),
    Column("protocol", String(8)),
    Column("command_type", String(128)),
    Column("status", String(16), nullable=False),
    Column("status_rank", SmallInteger, nullable=False),
    Column("detail", Text),
    Column("result", JSON),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("timeout_seconds", Float),
    Column("sent_at", Float),
    Index("ix_pusher_commands_created", "created_at", "request_id"),
    Index("ix_pusher_commands_device", "device_id", "created_at", "request_id"),
    Index("ix_pusher_commands_status", "status", "created_at", "request_id"),
    Index("ix_pusher_commands_expiry", "status_rank", "expires_at"),
    Index("ix_pusher_commands_deadline", "status_rank", "sent_at"),
)

history = Table(
    "pusher_command_history",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("request_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("source", String(128), nullable=False),
    Column("detail", String(DETAIL_MAX_CHARS), nullable=False, server_default=""),
    # The same event delivered twice (at-least-once) is one history entry.
    UniqueConstraint("request_id", "status", "source", "detail", name="uq_pusher_history_event"),
    Index("ix_pusher_history_request", "request_id", "at"),
)

# Version 2: device presence reported by connectors.
devices = Table(
    "pusher_devices",
    metadata,
    Column("device_id", String(128), primary_key=True),
    Column("protocol", String(8)),
    Column("online", Boolean),
    Column("last_seen", Float, nullable=False),
    Column("changed_at", Float),
    Column("source", String(128)),
    Column("detail", Text),
)

idempotency = Table(
    "pusher_idempotency",
    metadata,
    Column("scope", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(8), nullable=False),  # "pending" | "done"
    Column("status_code", Integer),
    Column("response", JSON),
    Column("created_at", Float, nullable=False),
    Index("ix_pusher_idempotency_created", "created_at"),
)


def to_epoch(value: datetime) -> float:
    """Epoch seconds of an aware (or UTC-naive) datetime."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    """Aware UTC datetime of epoch seconds (None stays None)."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


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


@dataclass(frozen=True, slots=True)
class QueuedCommand:
    """What the API knows of a command when Kafka acknowledged it."""

    request_id: str
    device_id: str
    protocol: str
    command_type: str
    created_at: float
    expires_at: float | None
    timeout_seconds: float | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One accepted event in a command's history."""

    status: str
    at: float
    source: str
    detail: str | None


@dataclass(slots=True)
class CommandRecord:
    """A command's row, with its history when read one by one."""

    request_id: str
    device_id: str
    protocol: str | None
    command_type: str | None
    status: CommandStatus
    detail: str | None
    result: Any
    created_at: float
    updated_at: float
    expires_at: float | None
    timeout_seconds: float | None
    sent_at: float | None
    history: list[HistoryEntry] = field(default_factory=list)

    @property
    def version(self) -> str:
        """Changes whenever the status or the history changes (long-poll, ETag)."""
        return f"{self.status.value}.{len(self.history)}"


@dataclass(frozen=True, slots=True)
class Transition:
    """A status change the store applied (for metrics and long-poll wake-ups)."""

    request_id: str
    status: CommandStatus
    protocol: str | None
    created_at: float
    at: float


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing and the cursor of the next one."""

    items: list[CommandRecord]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of claiming an idempotency key."""

    owner: bool
    request_hash: str
    state: str
    status_code: int | None = None
    response: Any = None


class InvalidCursorError(ValueError):
    """A listing cursor that this store did not issue."""


def encode_cursor(created_at: float, request_id: str) -> str:
    """Opaque cursor after (created_at, request_id)."""
    raw = f"{created_at!r}|{request_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of :func:`encode_cursor`.

    Raises:
        InvalidCursorError: not a cursor this store issued.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, request_id = raw.split("|", 1)
        value = float(created)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursorError("cursor is not valid") from exc
    if not request_id or value != value:  # NaN
        raise InvalidCursorError("cursor is not valid")
    return value, request_id


def _record(row: Any) -> CommandRecord:
    return CommandRecord(
        request_id=row.request_id,
        device_id=row.device_id,
        protocol=row.protocol,
        command_type=row.command_type,
        status=CommandStatus(row.status),
        detail=row.detail,
        result=row.result,
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
        timeout_seconds=row.timeout_seconds,
        sent_at=row.sent_at,
    )


class StatusStore:
    """Schema management, lifecycle-aware writes and the queries behind the status API."""

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

    @property
    def insert(self) -> Any:
        """The dialect's INSERT construct (with ON CONFLICT support)."""
        return self._insert

    def describe(self) -> str:
        """The URL without its password, for logs and status."""
        return make_url(self.url).render_as_string(hide_password=True)

    async def start(self) -> None:
        """Create or upgrade the schema.

        Raises:
            ConfigurationError: the store was written by a newer version of the service.
        """
        for attempt in range(3):
            try:
                async with self.engine.begin() as conn:
                    if self.dialect == "postgresql":
                        # Several instances may start at once: one migrates, the others wait.
                        await conn.execute(text("SELECT pg_advisory_xact_lock(7135391)"))
                    await self._migrate(conn)
                return
            except (IntegrityError, ProgrammingError) as exc:  # lost a creation race
                if attempt == 2:
                    raise
                log.info("status store schema race, retrying", error=type(exc).__name__)

    async def _migrate(self, conn: AsyncConnection) -> None:
        await conn.run_sync(metadata.create_all)
        version = (await conn.execute(select(schema_info.c.version))).scalar()
        if version is None:
            await conn.execute(schema_info.insert().values(id=1, version=SCHEMA_VERSION))
            log.info("status store schema created", version=SCHEMA_VERSION)
        elif version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"status store schema version {version} is newer than this service "
                f"({SCHEMA_VERSION}); upgrade the service"
            )
        elif version < SCHEMA_VERSION:
            # Upgrade steps go here, one per version, in order. 1 → 2 only adds the
            # pusher_devices table, which create_all above has made.
            await conn.execute(update(schema_info).values(version=SCHEMA_VERSION))
            log.info("status store schema upgraded", version=SCHEMA_VERSION)

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

    async def sweep(self, now: float | None = None, grace: float = 0.0) -> list[Transition]:
        """Expire queued commands past ``expires_at``; time out sent ones past their deadline.

        Each row changes in one conditional UPDATE, so several sweepers never double-fire:
        only the one whose UPDATE matched the row records the transition. ``grace`` seconds
        are added to every deadline: the connector that holds the command decides first,
        and its events may still be on their way.
        """
        now = time.time() if now is None else now
        deadline = now - grace
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
        record = _record(row)
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
        items = [_record(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last.created_at, last.request_id)
        return Page(items, next_cursor)

    # -- idempotency keys ---------------------------------------------------------------

    async def claim_idempotency_key(
        self, scope: str, key: str, request_hash: str, ttl_seconds: float, stale_seconds: float
    ) -> Claim:
        """Claim ``key`` for a new request, or return what an earlier request left.

        Exactly one of several concurrent claimants becomes the owner. A claim older than
        ``ttl_seconds`` is forgotten; a pending claim older than ``stale_seconds`` (its
        owner died) is taken over.
        """
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(idempotency)
                .where(idempotency.c.scope == scope, idempotency.c.key == key)
                .where(
                    or_(
                        idempotency.c.created_at < now - ttl_seconds,
                        and_(
                            idempotency.c.state == "pending",
                            idempotency.c.created_at < now - stale_seconds,
                        ),
                    )
                )
            )
            inserted = await conn.execute(
                self._insert(idempotency)
                .values(
                    scope=scope, key=key, request_hash=request_hash, state="pending", created_at=now
                )
                .on_conflict_do_nothing()
            )
            if inserted.rowcount:
                return Claim(owner=True, request_hash=request_hash, state="pending")
            row = (
                await conn.execute(
                    select(idempotency).where(
                        idempotency.c.scope == scope, idempotency.c.key == key
                    )
                )
            ).first()
        if row is None:  # removed between our insert and read; let the caller retry
            return Claim(owner=False, request_hash=request_hash, state="pending")
        return Claim(
            owner=False,
            request_hash=row.request_hash,
            state=row.state,
            status_code=row.status_code,
            response=row.response,
        )

    async def complete_idempotency_key(
        self, scope: str, key: str, status_code: int, response: Any
    ) -> None:
        """Store the response the key's owner sent."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(idempotency)
                .where(idempotency.c.scope == scope, idempotency.c.key == key)
                .values(state="done", status_code=status_code, response=response)
            )

    async def release_idempotency_key(self, scope: str, key: str) -> None:
        """Forget a pending claim whose request failed, so a retry can proceed."""
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(idempotency).where(
                    idempotency.c.scope == scope,
                    idempotency.c.key == key,
                    idempotency.c.state == "pending",
                )
            )

    async def purge_idempotency_keys(self, older_than: float) -> int:
        """Delete keys created before ``older_than`` (epoch seconds)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(idempotency).where(idempotency.c.created_at < older_than)
            )
        return int(result.rowcount or 0)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers do not block the writer; NORMAL is durable across process crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
