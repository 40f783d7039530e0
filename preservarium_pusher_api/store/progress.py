"""How far the trackers have read the results topic, for deadlines that respect lag.

Each tracker notes, for every results partition it owns, the last time it had read the
partition to its end. Deadlines are decided only up to the oldest of these times (the
watermark): an event produced before it has been applied, so a success that is merely
unread never turns into ``timed_out`` or ``expired``. A partition without a note (no
tracker has read it yet) or whose tracker stopped holds the watermark back until another
tracker takes it over and catches up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from preservarium_pusher_api.store.schema import tracker_progress


class TrackerProgress:
    """Per-partition reading progress on the status store's engine."""

    def __init__(self, engine: AsyncEngine, insert: Callable[..., Any]) -> None:
        self._engine = engine
        self._insert = insert

    async def caught_up(self, topic: str, partitions: Mapping[int, float]) -> None:
        """Note that each partition had been read to its end at the given time (the time
        only moves forward)."""
        if not partitions:
            return
        statement = self._insert(tracker_progress)
        statement = statement.on_conflict_do_update(
            index_elements=["topic", "partition"],
            set_={"caught_up_at": statement.excluded.caught_up_at},
            where=tracker_progress.c.caught_up_at < statement.excluded.caught_up_at,
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                statement,
                [
                    {"topic": topic, "partition": partition, "caught_up_at": at}
                    for partition, at in partitions.items()
                ],
            )

    async def watermark(self, topic: str, partition_count: int) -> float | None:
        """The time up to which every partition has been read; None while a partition has
        never been read to its end."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(tracker_progress.c.partition, tracker_progress.c.caught_up_at).where(
                        tracker_progress.c.topic == topic,
                        tracker_progress.c.partition < partition_count,
                    )
                )
            ).all()
        if len(rows) < partition_count:
            return None
        return min(row.caught_up_at for row in rows)
