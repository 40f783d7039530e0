"""Device presence: what connectors last heard from each device, and its pending commands.

Written by the tracker from the presence topic, read by ``GET /api/v1/devices``. Presence
records may arrive out of order: ``last_seen`` only moves forward and an online/offline
change older than the one stored is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from preservarium_pusher_api.core.contract import TERMINAL_STATUSES, DevicePresence
from preservarium_pusher_api.store.records import from_epoch, to_epoch
from preservarium_pusher_api.store.schema import commands, devices

_PENDING_BELOW_RANK = next(iter(TERMINAL_STATUSES)).rank


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One device as the API shows it."""

    device_id: str
    protocol: str | None
    online: bool | None
    last_seen: datetime | None
    pending_commands: int
    detail: str | None = None


class DeviceDirectory:
    """Presence writes and device queries on the status store's engine."""

    def __init__(self, engine: AsyncEngine, insert: Callable[..., Any]) -> None:
        self._engine = engine
        self._insert = insert

    async def apply_presence(self, items: Sequence[DevicePresence]) -> None:
        """Upsert presence records in one transaction (idempotent, order-tolerant)."""
        if not items:
            return
        insert = self._insert
        async with self._engine.begin() as conn:
            for item in items:
                seen = to_epoch(item.last_seen)
                statement = insert(devices).values(
                    device_id=item.device_id,
                    protocol=item.protocol.value,
                    online=item.online,
                    last_seen=seen,
                    changed_at=seen if item.online is not None else None,
                    source=item.source,
                    detail=item.detail,
                )
                excluded = statement.excluded
                newer_change = (excluded.online.is_not(None)) & (
                    excluded.last_seen >= func.coalesce(devices.c.changed_at, 0)
                )
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[devices.c.device_id],
                        set_={
                            "protocol": excluded.protocol,
                            "last_seen": case(
                                (excluded.last_seen > devices.c.last_seen, excluded.last_seen),
                                else_=devices.c.last_seen,
                            ),
                            "online": case((newer_change, excluded.online), else_=devices.c.online),
                            "changed_at": case(
                                (newer_change, excluded.last_seen), else_=devices.c.changed_at
                            ),
                            "detail": case((newer_change, excluded.detail), else_=devices.c.detail),
                            "source": excluded.source,
                        },
                    )
                )

    async def list(self, limit: int = 500) -> list[DeviceState]:
        """Devices heard from or with pending commands, by device_id."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(select(devices).order_by(devices.c.device_id).limit(limit))
            ).all()
            pending = await self._pending(conn, None)
        states = {row.device_id: _state(row, pending.get(row.device_id, 0)) for row in rows}
        for device_id, count in pending.items():
            if device_id not in states and len(states) < limit:
                states[device_id] = DeviceState(device_id, None, None, None, count)
        return [states[key] for key in sorted(states)]

    async def get(self, device_id: str) -> DeviceState | None:
        """One device, or None when it was never heard from and has no command."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(devices).where(devices.c.device_id == device_id))
            ).first()
            pending = (await self._pending(conn, device_id)).get(device_id, 0)
            if row is not None:
                return _state(row, pending)
            known = (
                await conn.execute(
                    select(commands.c.protocol).where(commands.c.device_id == device_id).limit(1)
                )
            ).first()
        if known is None:
            return None
        return DeviceState(device_id, known.protocol, None, None, pending)

    @staticmethod
    async def _pending(conn: AsyncConnection, device_id: str | None) -> dict[str, int]:
        query = (
            select(commands.c.device_id, func.count())
            .where(commands.c.status_rank < _PENDING_BELOW_RANK)
            .group_by(commands.c.device_id)
        )
        if device_id is not None:
            query = query.where(commands.c.device_id == device_id)
        result = await conn.execute(query)
        return {row[0]: int(row[1]) for row in result.all()}


def _state(row: Any, pending: int) -> DeviceState:
    return DeviceState(
        device_id=row.device_id,
        protocol=row.protocol,
        online=row.online,
        last_seen=from_epoch(row.last_seen),
        pending_commands=pending,
        detail=row.detail,
    )
