"""Which offset of a partition may be committed: the one after the finished prefix.

Records finish out of order (devices run in parallel), but Kafka commits one position per
partition. Committing only past the contiguous finished prefix means a crash re-delivers
whatever was not finished instead of losing it.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Offsets taken from one partition and which of them are finished."""

    __slots__ = ("_done", "_pending", "committable")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self.committable: int | None = None

    def __len__(self) -> int:
        """Records taken and not yet part of the finished prefix."""
        return len(self._pending)

    def track(self, offset: int) -> None:
        """Note a record taken from the partition (offsets arrive in increasing order)."""
        self._pending.append(offset)

    def finish(self, offset: int) -> bool:
        """Mark a record finished; True when the committable position moved."""
        if not self._pending or offset < self._pending[0]:
            return False  # already committed, or from before a rebalance
        self._done.add(offset)
        moved = False
        while self._pending and self._pending[0] in self._done:
            head = self._pending.popleft()
            self._done.discard(head)
            self.committable = head + 1
            moved = True
        return moved


class OffsetBook:
    """PartitionOffsets for every partition this instance owns, keyed by partition."""

    def __init__(self) -> None:
        self._partitions: dict[object, PartitionOffsets] = {}
        self._committed: dict[object, int] = {}

    def track(self, partition: object, offset: int) -> None:
        """Note a record taken from ``partition``."""
        book = self._partitions.get(partition)
        if book is None:
            book = self._partitions[partition] = PartitionOffsets()
        book.track(offset)

    def finish(self, partition: object, offset: int) -> None:
        """Mark a record finished (ignored for partitions no longer owned)."""
        book = self._partitions.get(partition)
        if book is not None:
            book.finish(offset)

    def pending(self, partition: object) -> int:
        """Unfinished records of ``partition``."""
        book = self._partitions.get(partition)
        return len(book) if book is not None else 0

    def total_pending(self) -> int:
        """Unfinished records of every partition."""
        return sum(len(book) for book in self._partitions.values())

    def to_commit(self, partitions: object = None) -> dict[object, int]:
        """Positions that moved since the last ``committed()`` (of ``partitions`` if given)."""
        wanted = None if partitions is None else set(partitions)  # type: ignore[call-overload]
        positions = {}
        for partition, book in self._partitions.items():
            if wanted is not None and partition not in wanted:
                continue
            if book.committable is not None and book.committable != self._committed.get(partition):
                positions[partition] = book.committable
        return positions

    def committed(self, positions: dict[object, int]) -> None:
        """Record positions the broker accepted."""
        self._committed.update(positions)

    def forget(self, partitions: object) -> None:
        """Drop partitions this instance no longer owns."""
        for partition in partitions:  # type: ignore[attr-defined]
            self._partitions.pop(partition, None)
            self._committed.pop(partition, None)
