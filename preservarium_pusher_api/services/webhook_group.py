"""The webhook consumer group's membership: one owner of every partition, and hand-overs.

A command's ``queued`` (commands topic) and its later statuses (results topic) must leave
from the same reader to stay in order, so the group's assignor gives every partition of
every topic to one member; the others stand by. ``Handover`` tells the owner when a
rebalance takes its partitions away and gives them (back); ``join_group`` joins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import KafkaError

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.kafka import consumer_options
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)


class OneOwnerAssignor(AbstractPartitionAssignor):
    """Every partition of every subscribed topic to one member (the lowest member id)."""

    name = "pusher-one-owner"
    version = 0

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        owner = min(members)
        topics = sorted({topic for meta in members.values() for topic in meta.subscription})
        owned = [(topic, sorted(cluster.partitions_for_topic(topic) or ())) for topic in topics]
        return {
            member: ConsumerProtocolMemberAssignment(
                cls.version, owned if member == owner else [], b""
            )
            for member in members
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        return None


class Owner(Protocol):
    """What a rebalance tells the member that may own the partitions."""

    async def revoked(self, consumer: AIOKafkaConsumer) -> None: ...

    async def assigned(
        self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]
    ) -> None: ...


class Handover(ConsumerRebalanceListener):
    """Tells the dispatcher when partitions are taken away and given."""

    def __init__(self, dispatcher: Owner, consumer: AIOKafkaConsumer) -> None:
        self._dispatcher = dispatcher
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._dispatcher.revoked(self._consumer)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._dispatcher.assigned(self._consumer, set(assigned))


async def join_group(
    settings: Settings, topics: Sequence[str], owner: Owner, stopping: asyncio.Event
) -> AIOKafkaConsumer | None:
    """A started consumer of ``topics`` in the webhook group, telling ``owner`` of
    hand-overs; retried with backoff until it joins, or None once ``stopping`` is set."""
    attempt = 0
    while not stopping.is_set():
        options = consumer_options(settings, settings.webhook_group_id)
        options["auto_offset_reset"] = "latest"  # a new group starts with new events
        options["partition_assignment_strategy"] = (OneOwnerAssignor,)
        consumer = AIOKafkaConsumer(**options)
        consumer.subscribe(list(topics), listener=Handover(owner, consumer))
        try:
            await consumer.start()
            return consumer
        except (KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            attempt += 1
            log.warning("webhook consumer not connected; retrying", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), backoff_delay(attempt, 5.0))
    return None
