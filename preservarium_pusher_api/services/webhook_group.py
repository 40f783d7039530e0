"""The webhook consumer group's membership: one owner of every partition, and hand-overs.

A command's ``queued`` (commands topic) and its later statuses (results topic) must leave
from the same reader to stay in order, so the group's assignor gives every partition of
every topic to one member; the others stand by. ``Handover`` tells the owner when a
rebalance takes its partitions away and gives them (back).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)


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
