"""Helpers for connector tests: settings, a connector running in this event loop, MQTT
listeners."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
from pusher_dev.mosquitto import PrivateMosquitto
from pusher_dev.pico_simulator import SimulatedPico

from connectors.mqtt.transport import MqttTransport
from connectors.runtime import ConnectorRuntime
from connectors.settings import ConnectorSettings, MqttSettings
from connectors.transport import Transport
from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.services.kafka_service import KafkaService


def mqtt_settings(base: Settings, broker: PrivateMosquitto, **overrides: Any) -> MqttSettings:
    """Connector settings on the test's Kafka topics and the private broker."""
    values = base.model_dump()
    values.update(
        {
            "mqtt_broker_url": broker.url,
            "mqtt_topic_prefix": overrides.pop("prefix", f"t{uuid.uuid4().hex[:8]}"),
            "mqtt_client_id": f"connector-{uuid.uuid4().hex[:8]}",
            "connector_metrics_port": 0,
            "connector_id": "test",
            "connector_group_id": f"connector-{uuid.uuid4().hex[:8]}",
            "mqtt_reconnect_max_backoff_seconds": 0.5,
            "connector_retry_max_backoff_seconds": 0.5,
        }
    )
    values.update(overrides)
    return MqttSettings(_env_file=None, **values)  # type: ignore[call-arg]


SettingsT = TypeVar("SettingsT", bound=ConnectorSettings)


def registry_settings(
    settings_class: type[SettingsT],
    base: Settings,
    tmp_path: Path,
    devices: dict[str, Any],
    **overrides: Any,
) -> SettingsT:
    """Connector settings on ``base``'s Kafka topics with ``devices`` as the registry file,
    its own state directory and consumer group."""
    registry_path = tmp_path / f"devices-{uuid.uuid4().hex[:6]}.json"
    registry_path.write_text(json.dumps({"devices": devices}))
    values = base.model_dump()
    values.update(
        device_registry_path=registry_path,
        connector_metrics_port=0,
        connector_id="test",
        connector_group_id=f"connector-{uuid.uuid4().hex[:8]}",
    )
    values.update(overrides)
    return settings_class(_env_file=None, **values)  # type: ignore[call-arg]


async def create_topics(settings: Settings) -> None:
    """The topics the API creates at start, for tests that run connectors without it."""
    service = KafkaService(settings, PusherMetrics())
    await service._ensure_topics()


@contextlib.asynccontextmanager
async def running_connector(
    settings: ConnectorSettings, transport: Transport | None = None
) -> AsyncIterator[ConnectorRuntime]:
    """A connector (MQTT unless ``transport`` is given) in this loop, consuming and
    connected; stopped gracefully after."""
    if transport is None:
        assert isinstance(settings, MqttSettings)
        transport = MqttTransport(settings)
    runtime = ConnectorRuntime(settings, transport)
    task = asyncio.create_task(runtime.run())
    try:
        async with asyncio.timeout(20):
            while not (runtime.consuming.is_set() and runtime.transport.connected):
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
        yield runtime
    finally:
        runtime.stop()
        async with asyncio.timeout(30):
            await task


@contextlib.asynccontextmanager
async def simulators(
    broker: PrivateMosquitto, prefix: str, *device_ids: str, **options: Any
) -> AsyncIterator[list[SimulatedPico]]:
    """Simulated Pico W boards, connected before the block starts."""
    sims = [
        SimulatedPico(device_id, broker.host, broker.port, prefix, **options)
        for device_id in device_ids
    ]
    tasks = [asyncio.create_task(sim.run()) for sim in sims]
    try:
        async with asyncio.timeout(10):
            for sim in sims:
                await sim.connected.wait()
        yield sims
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def mqtt_listener(broker: PrivateMosquitto, topic: str) -> AsyncIterator[list[Any]]:
    """Collect every message on ``topic`` (wildcards allowed) as (topic, payload, retain)."""
    received: list[Any] = []
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                received.append((message.topic.value, payload, message.retain))

        task = asyncio.create_task(collect())
        try:
            yield received
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def envelope(payload: bytes) -> dict[str, Any]:
    """A published command decoded."""
    decoded: dict[str, Any] = json.loads(payload)
    return decoded


def settings_env(settings: ConnectorSettings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a connector process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None or isinstance(value, dict | list):
            continue
        env[name.upper()] = str(value)
    return env


class ConnectorProcess:
    """``python -m connectors.mqtt`` as a child process, with its log in a file."""

    def __init__(self, settings: MqttSettings, log_path: Path) -> None:
        import os
        import subprocess
        import sys

        self.log_path = log_path
        env = {**os.environ, **settings_env(settings), "LOG_FORMAT": "json"}
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "connectors.mqtt"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def logs(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit."""
        self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.process.terminate()
        return self.process.wait(timeout=timeout)


async def journal_entries(settings: ConnectorSettings, request_ids: set[str]) -> list[str]:
    """The sent-command journal's entries about ``request_ids`` (to explain a failure)."""
    from aiokafka import AIOKafkaConsumer

    from connectors.journal import journal_topic

    topic = journal_topic(settings, "mqtt")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[str] = []
    try:
        while batches := await consumer.getmany(timeout_ms=1000):
            for records in batches.values():
                for record in records:
                    entry = json.loads(record.value or b"{}")
                    if entry.get("request_id") in request_ids:
                        found.append(
                            f"p{record.partition}@{record.offset} ts={record.timestamp} {entry}"
                        )
    finally:
        await consumer.stop()
    return found


async def connector_sends(settings: ConnectorSettings, protocol: str = "mqtt") -> Counter[str]:
    """How many times the connectors handed each request_id to the transport, read from
    the sent-command journal (written before every send; a ``forgotten`` entry takes back
    a send that surely did not leave the process)."""
    from aiokafka import AIOKafkaConsumer

    from connectors.journal import journal_topic

    consumer = AIOKafkaConsumer(
        journal_topic(settings, protocol),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    sends: Counter[str] = Counter()
    try:
        while batches := await consumer.getmany(timeout_ms=1000):
            for records in batches.values():
                for record in records:
                    entry = json.loads(record.value or b"{}")
                    sends[entry["request_id"]] += 1 if entry["event"] == "sent" else -1
    finally:
        await consumer.stop()
    return sends
