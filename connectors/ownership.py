"""Which replica reports a device's answers: the owner of the device's commands partition.

Every replica reads every device answer (plain MQTT subscriptions). Commands are keyed by
device_id, so the Kafka default partitioner (murmur2, as the API's producer and the Java
clients use) names the one commands partition — and so the one replica — that holds a
device's commands. That replica reports the answer and releases its lane.

The others keep the answer for a while (bounded in number and time), and so does every
replica while the assignment is unsettled (at start, during a rebalance). When a replica
takes a partition over — its owner died, say, after the answer reached it but before it
was reported — it reports the kept answers of that partition's devices. An answer may so
be reported twice (once by each owner); statuses only move forward and the first terminal
one wins, so that changes nothing, while an answer reported by nobody would leave a
command that ran to end ``timed_out``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

_DEFERRED_MAX = 10_000
_DEFERRED_SECONDS = 60.0


class Ownership:
    """The commands partitions this replica owns, and answers waiting for them."""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._owned: set[int] | None = None
        self._before: set[int] = set()
        self._count: int | None = None
        # (when, device, answer, read while unsettled)
        self._deferred: deque[tuple[float, str, Any, bool]] = deque()
        self._partitioner = DefaultPartitioner()

    def revoked(self) -> None:
        """A rebalance started: ownership is unsettled until the next assignment."""
        if self._owned is not None:
            self._before = self._owned
        self._owned = None

    def assigned(self, assigned: list[Any], partitions: int | None) -> list[tuple[str, Any]]:
        """The assignment settled; returns the kept answers that are now this replica's
        to report: those read while unsettled, and those of partitions it did not own
        before (their owner may not have reported them)."""
        self._owned = {tp.partition for tp in assigned if tp.topic == self._topic}
        self._count = partitions or self._count
        gained = self._owned - self._before
        waiting, self._deferred = self._deferred, deque()
        now = time.monotonic()
        mine: list[tuple[str, Any]] = []
        for at, device_id, answer, unsettled in waiting:
            if now - at >= _DEFERRED_SECONDS:
                continue
            partition = self.partition_of(device_id)
            if partition in self._owned and (unsettled or partition in gained):
                mine.append((device_id, answer))
            else:
                self._deferred.append((at, device_id, answer, unsettled))
        return mine

    def partition_of(self, device_id: str) -> int | None:
        """The commands partition of the device's commands (None: count unknown yet)."""
        if not self._count:
            return None
        partitions = list(range(self._count))
        return int(self._partitioner(device_id.encode(), partitions, partitions))

    def owns(self, device_id: str) -> bool | None:
        """True/False once the assignment is settled; None while it is not."""
        if self._owned is None:
            return None
        partition = self.partition_of(device_id)
        return None if partition is None else partition in self._owned

    def keep(self, device_id: str, answer: Any) -> None:
        """Keep an answer this replica does not act on now (oldest dropped beyond the
        bounds): ownership is unsettled, or another replica owns the device."""
        now = time.monotonic()
        while self._deferred and (
            len(self._deferred) >= _DEFERRED_MAX or now - self._deferred[0][0] > _DEFERRED_SECONDS
        ):
            self._deferred.popleft()
        self._deferred.append((now, device_id, answer, self._owned is None))
