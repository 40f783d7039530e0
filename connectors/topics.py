"""Topics the connectors keep beside the commands topic, partitioned like it.

The sent-command journal and the parking lot of a commands partition live in the
partition of the same number of their own topic, so whichever replica owns a commands
partition reads and writes exactly its own part of them.
"""

from __future__ import annotations

import contextlib

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from connectors.settings import ConnectorSettings
from preservarium_pusher_api.core.kafka import connection_options
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)


async def ensure_like_commands(
    settings: ConnectorSettings, topic: str, *, compacted: bool = False
) -> None:
    """Create ``topic`` with the commands topic's partition count if it does not exist.

    Raises:
        KafkaError: the commands topic does not exist yet (the API creates it), or the
            cluster refused; the caller retries.
    """
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if topic in existing:
            return
        if settings.kafka_command_topic not in existing:
            raise KafkaError(f"commands topic {settings.kafka_command_topic!r} missing")
        described = await admin.describe_topics([settings.kafka_command_topic])
        partitions = len(described[0]["partitions"])
        configs = {"cleanup.policy": "compact"} if compacted else None
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [
                    NewTopic(
                        topic,
                        partitions,
                        settings.kafka_topic_replication_factor,
                        topic_configs=configs,
                    )
                ]
            )
        log.info("topic created", topic=topic, partitions=partitions, compacted=compacted)
    finally:
        await admin.close()


def reader(settings: ConnectorSettings) -> AIOKafkaConsumer:
    """A consumer outside any group, for reading a partition back by hand."""
    return AIOKafkaConsumer(
        **connection_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
