"""A Pico W on CPython: the firmware's own command handling behind a real MQTT client.

Commands are run by ``firmware/pico_w/device.py``'s ``Device`` with the tasks of
``tasks.py`` (see ``pico_firmware``), so what a simulated board answers is what the board
answers: ``{"request_id", "task", "status": "success"|"error", "result"|"error",
"timestamp"}`` on ``{prefix}/{id}/result``, and a repeated request_id gets the stored answer
instead of running again. Around it the simulator does what ``main.py`` and mqtt_as do on
the board: subscribes ``{prefix}/{id}/command`` (QoS 1, persistent session), keeps a
retained ``{"status": "online"}`` on ``{prefix}/{id}/status`` with a last will
``{"status": "offline"}``. Latency, error rate and offline periods are configurable, and
it counts every execution (``executed``) for tests.

Run one: ``python -m pusher_dev.pico_simulator --device-id pico-1``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from preservarium_pusher_api.core.logging import get_logger
from pusher_dev.pico_firmware import load_firmware

log = get_logger(__name__)

# Answers remembered so a repeated request_id is not run again (the board's
# "recent_requests"; a board with more memory to spare). 0 makes a board that runs every
# command it is given, like a generic device: what tests of "never twice" need.
RECENT_REQUESTS = 64


@dataclass
class SimulatedPico:
    """One simulated board; ``run()`` keeps it connected until cancelled."""

    device_id: str
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    prefix: str = "lab"
    latency: float = 0.0
    error_rate: float = 0.0
    seed: int | None = None
    username: str | None = None
    password: str | None = None
    recent_requests: int = RECENT_REQUESTS
    executed: Counter[str] = field(default_factory=Counter)
    order: list[str] = field(default_factory=list)
    duplicates_absorbed: int = 0
    connections: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)  # noqa: S311 - simulation
        self._online = asyncio.Event()
        self._online.set()
        self._offline = asyncio.Event()
        self.connected = asyncio.Event()
        firmware = load_firmware()
        self.tasks: dict[str, Callable[..., Any]] = {
            name: self._flaky(function) for name, function in firmware.tasks.items()
        }
        # The board reads its id from config.py; the simulator answers with its own.
        self.tasks["get_device_status"] = self._flaky(self._device_status)
        config = {
            "device_id": self.device_id,
            "topic_prefix": self.prefix,
            "recent_requests": self.recent_requests,
        }
        self.device = firmware.device_class(config, self.tasks)

    @property
    def command_topic(self) -> str:
        """Where commands arrive."""
        return f"{self.prefix}/{self.device_id}/command"

    def _device_status(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "free_memory": 150_000,
            "platform": "micropython-simulator",
            "tasks_available": sorted(self.tasks),
            "uptime_ms": int(time.monotonic() * 1000),
        }

    def go_offline(self) -> None:
        """Say offline and disconnect until ``go_online``."""
        self._online.clear()
        self._offline.set()

    def go_online(self) -> None:
        """Connect again after ``go_offline``."""
        self._offline.clear()
        self._online.set()

    async def run(self) -> None:
        """Stay connected (reconnecting like mqtt_as) and serve commands."""
        will = aiomqtt.Will(self._topic("status"), b'{"status": "offline"}', qos=1, retain=True)
        while True:
            await self._online.wait()
            try:
                async with aiomqtt.Client(
                    self.broker_host,
                    self.broker_port,
                    identifier=f"sim-{self.device_id}",
                    username=self.username,
                    password=self.password,
                    clean_session=False,
                    will=will,
                    keepalive=10,
                    # answers go out at once (no Nagle wait behind the command's PUBACK)
                    socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                ) as client:
                    await client.subscribe(self.command_topic, qos=1)
                    await client.publish(
                        self._topic("status"), b'{"status": "online"}', qos=1, retain=True
                    )
                    self.connections += 1
                    self.connected.set()
                    serving = asyncio.create_task(self._serve(client))
                    going_offline = asyncio.create_task(self._offline.wait())
                    try:
                        await asyncio.wait(
                            {serving, going_offline}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        for task in (serving, going_offline):
                            task.cancel()
                        await asyncio.gather(serving, going_offline, return_exceptions=True)
                    if serving.done() and not serving.cancelled() and serving.exception():
                        raise serving.exception()  # type: ignore[misc]
                    # asked to go offline: say so as the last will would
                    await client.publish(
                        self._topic("status"), b'{"status": "offline"}', qos=1, retain=True
                    )
            except aiomqtt.MqttError as exc:
                log.info("simulator lost the broker", device_id=self.device_id, error=str(exc))
                self.connected.clear()
                await asyncio.sleep(0.2)
            finally:
                self.connected.clear()

    async def _serve(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            answer = await self.handle(payload)
            if answer is not None:
                await client.publish(self._topic("result"), answer, qos=1)

    async def handle(self, payload: bytes) -> bytes | None:
        """Run one command envelope through the firmware; the answer bytes (None for junk)."""
        try:
            request_id = json.loads(payload)["request_id"]
        except (ValueError, KeyError, TypeError):
            return None
        if self.device.remembered(request_id) is not None:
            self.duplicates_absorbed += 1  # the firmware answers again without running it
        else:
            self.executed[request_id] += 1
            self.order.append(request_id)
            if self.latency:
                await asyncio.sleep(self.latency)
        answer = self.device.handle(payload)
        return answer.encode() if answer is not None else None

    def _flaky(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """The task, failing at ``error_rate`` like a board whose task raises."""

        def run(**parameters: Any) -> Any:
            if self.error_rate and self._random.random() < self.error_rate:
                raise RuntimeError("simulated device error")
            return function(**parameters)

        return run

    def _topic(self, kind: str) -> str:
        return f"{self.prefix}/{self.device_id}/{kind}"


async def run_simulators(simulators: list[SimulatedPico]) -> None:
    """Run several simulators until cancelled."""
    await asyncio.gather(*(simulator.run() for simulator in simulators))


def main(argv: list[str] | None = None) -> int:
    """``python -m pusher_dev.pico_simulator``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device-id", action="append", required=True, help="repeatable")
    parser.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="broker URL; each board logs in as its device id (MQTT_DEVICE_USERNAME overrides) "
        "with MQTT_PASSWORD",
    )
    parser.add_argument("--prefix", default="lab")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per command")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of failing tasks")
    args = parser.parse_args(argv)
    url = urlsplit(args.broker)
    simulators = [
        SimulatedPico(
            device_id,
            url.hostname or "127.0.0.1",
            url.port or 1883,
            args.prefix,
            args.latency,
            args.error_rate,
            # each board logs in as itself (the ACL of `pusher mqtt-acl`), unless told
            username=os.environ.get("MQTT_DEVICE_USERNAME") or device_id,
            password=os.environ.get("MQTT_PASSWORD") or None,
        )
        for device_id in args.device_id
    ]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_simulators(simulators))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
