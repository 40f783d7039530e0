"""`pusher mqtt-acl` on a real Mosquitto: a board can speak only for itself."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from pusher_dev.mosquitto import PrivateMosquitto

from pusher_cli.main import main as pusher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

USERS = {"pusher-connector": "connector-secret", "pico-a": "secret-a", "pico-b": "secret-b"}
REGISTRY = """
devices:
  pico-a: {protocol: mqtt}
  pico-b: {protocol: mqtt, allowed_topics: [lab/pico-b/display]}
  ot2-1: {protocol: http, address: {base_url: "http://ot2:31960"}}
"""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    registry = tmp_path / "devices.yaml"
    registry.write_text(REGISTRY)
    acl = tmp_path / "acl"
    assert pusher(["mqtt-acl", "--registry", str(registry), "--prefix", "lab", "-o", str(acl)]) == 0
    passwords = tmp_path / "passwd"
    passwords.touch()
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for user, password in USERS.items():
        subprocess.run([tool, "-b", str(passwords), user, password], check=True)
    passwords.chmod(0o600)
    with PrivateMosquitto(password_file=passwords, acl_file=acl) as running:
        yield running


def client(broker: PrivateMosquitto, user: str | None) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=user,
        password=USERS.get(user or ""),
        protocol=aiomqtt.ProtocolVersion.V5,
    )


async def collect(subscriber: aiomqtt.Client, seconds: float = 0.5) -> list[tuple[str, bytes]]:
    seen: list[tuple[str, bytes]] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in subscriber.messages:
                seen.append((message.topic.value, bytes(message.payload)))  # type: ignore[arg-type]
    return seen


async def test_a_device_publishes_and_reads_only_its_own_topics(broker: PrivateMosquitto) -> None:
    async with (
        client(broker, "pusher-connector") as connector,
        client(broker, "pico-a") as pico_a,
        client(broker, "pico-b") as pico_b,
    ):
        await connector.subscribe([("lab/+/result", 1), ("lab/+/status", 1)])
        await pico_a.subscribe("lab/pico-b/command", qos=1)  # not granted: receives nothing
        await pico_b.subscribe([("lab/pico-b/command", 1), ("lab/pico-b/display", 1)])
        # a forged answer and a forged status for pico-b, then pico-a's own answer
        await pico_a.publish("lab/pico-b/result", b'{"status": "success"}', qos=1)
        await pico_a.publish("lab/pico-b/status", b'{"status": "offline"}', qos=1, retain=True)
        await pico_a.publish("lab/pico-a/result", b'{"own": true}', qos=1)
        assert await collect(connector) == [("lab/pico-a/result", b'{"own": true}')]
        # commands reach only the device they are for; pico-a cannot send commands
        await pico_a.publish("lab/pico-b/command", b"forged", qos=1)
        await connector.publish("lab/pico-b/command", b"real", qos=1)
        await connector.publish("lab/pico-b/display", b"shown", qos=1)
        assert await collect(pico_a) == []
        assert await collect(pico_b) == [
            ("lab/pico-b/command", b"real"),
            ("lab/pico-b/display", b"shown"),
        ]


async def test_anonymous_and_wrong_passwords_are_refused(broker: PrivateMosquitto) -> None:
    for user, password in ((None, None), ("pico-a", "not-the-secret")):
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(broker.host, broker.port, username=user, password=password):
                pass
