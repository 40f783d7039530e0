"""A CoAP sensor simulator (aiocoap server) and a lossy UDP relay, for dev, tests and bench.

Resources (POST), one per command type; JSON, CBOR or the binary configuration frames of
``connectors/parsers/sensor_config_parser`` in, the same format out:

* ``config_update`` — applies measurement/transmission intervals, channels, alarm threshold
  and answers with the configuration now in force (4.00 with the reason when invalid;
  a binary frame answers with its status byte instead);
* ``config_read`` — the current configuration;
* ``read_sensor`` — ``{"channel", "temperature", "humidity"}`` (4.00 for a channel not 0..7);
* ``echo`` — the payload back (block-wise transfers, benchmarks).

``delays`` makes a resource slow (beyond 0.1 s aiocoap sends an empty ACK and then a
separate response), ``errors`` makes it answer a fixed code. Every request is recorded
(path, payload bytes, CON/NON, content format) so tests can check what arrived.

``LossyRelay`` sits in front of it and drops a share of the datagrams in both directions.

    python -m pusher_dev.coap_simulator --port 5683 [--loss 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiocoap
import aiocoap.resource
import cbor2
from aiocoap.numbers import ContentFormat

from connectors.parsers import sensor_config_parser as frames
from pusher_dev.embedded_kafka import free_port

JSON = ContentFormat.by_media_type("application/json")
CBOR = ContentFormat.by_media_type("application/cbor")
OCTETS = ContentFormat.by_media_type("application/octet-stream")


@dataclass(frozen=True)
class Received:
    """One request as the simulator got it."""

    path: str
    payload: bytes
    confirmable: bool
    content_format: int | None
    at: float = field(default_factory=time.monotonic)


class _BadRequest(Exception):
    pass


def _read(request: aiocoap.Message) -> Any:
    fmt = request.opt.content_format
    if not request.payload:
        return {}
    try:
        if fmt == CBOR:
            return cbor2.loads(request.payload)
        return json.loads(request.payload)
    except (ValueError, cbor2.CBORError) as exc:
        raise _BadRequest(f"payload is not {'CBOR' if fmt == CBOR else 'JSON'}") from exc


def _reply(request: aiocoap.Message, value: Any, code: aiocoap.numbers.Code) -> aiocoap.Message:
    if request.opt.content_format == CBOR:
        return aiocoap.Message(code=code, payload=cbor2.dumps(value), content_format=CBOR)
    payload = json.dumps(value, separators=(",", ":")).encode()
    return aiocoap.Message(code=code, payload=payload, content_format=JSON)


class _SensorResource(aiocoap.resource.Resource):
    def __init__(self, sensor: SimulatedCoapSensor, name: str) -> None:
        super().__init__()
        self.sensor = sensor
        self.name = name

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        sensor = self.sensor
        sensor.received.append(
            Received(
                self.name,
                bytes(request.payload),
                request.mtype == aiocoap.CON,
                request.opt.content_format,
            )
        )
        delay = sensor.delays.get(self.name, sensor.delay)
        if delay:
            await asyncio.sleep(delay)
        if self.name in sensor.errors:
            code, text = sensor.errors[self.name]
            return aiocoap.Message(code=code, payload=text.encode())
        try:
            return sensor.handle(self.name, request)
        except _BadRequest as exc:
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=str(exc).encode())


class SimulatedCoapSensor:
    """An aiocoap server on ``host:port`` acting as one sensor; see the module docstring."""

    RESOURCES = ("config_update", "config_read", "read_sensor", "echo")

    def __init__(
        self,
        device_id: str = "coap-sensor-001",
        host: str = "127.0.0.1",
        port: int | None = None,
        delay: float = 0.0,
        delays: dict[str, float] | None = None,
        errors: dict[str, tuple[aiocoap.numbers.Code, str]] | None = None,
    ) -> None:
        self.device_id = device_id
        self.host = host
        self.port = port or free_port(host)
        self.delay = delay
        self.delays = dict(delays or {})
        self.errors = dict(errors or {})
        self.received: list[Received] = []
        self.config: dict[str, int] = {
            "measurement_interval": 300,
            "transmission_interval": 900,
            "channels": 0b00000011,
            "alarm_threshold": 300,
        }
        self._context: aiocoap.Context | None = None

    def requests_to(self, name: str) -> list[Received]:
        """What arrived at one resource, oldest first."""
        return [r for r in self.received if r.path == name]

    async def start(self) -> SimulatedCoapSensor:
        """Bind and serve."""
        site = aiocoap.resource.Site()
        for name in self.RESOURCES:
            site.add_resource([name], _SensorResource(self, name))
        self._context = await aiocoap.Context.create_server_context(
            site, bind=(self.host, self.port), loggername=f"coap-sim-{self.device_id}"
        )
        return self

    async def stop(self) -> None:
        """Stop serving."""
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()

    async def __aenter__(self) -> SimulatedCoapSensor:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self) -> None:
        """Serve until cancelled (``pusher dev``)."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    # -- behaviour --------------------------------------------------------------------

    def handle(self, name: str, request: aiocoap.Message) -> aiocoap.Message:
        """Answer one request to resource ``name``."""
        if name == "echo":
            return aiocoap.Message(
                code=aiocoap.CHANGED,
                payload=request.payload,
                content_format=request.opt.content_format,
            )
        if request.opt.content_format == OCTETS and name.startswith("config_"):
            return self._binary_config(request.payload)
        body = _read(request)
        if not isinstance(body, dict):
            raise _BadRequest("payload must be a map of parameters")
        if name == "read_sensor":
            channel = body.get("channel", 0)
            if not isinstance(channel, int) or not 0 <= channel <= 7:
                raise _BadRequest("channel must be 0..7")
            reading = {"channel": channel, "temperature": 21.5 + channel, "humidity": 40.0}
            return _reply(request, reading, aiocoap.CONTENT)
        if name == "config_update":
            try:
                self.config.update(frames.to_wire(body))
            except ValueError as exc:
                raise _BadRequest(str(exc)) from exc
        return _reply(request, frames.from_wire(self.config), aiocoap.CHANGED)

    def _binary_config(self, payload: bytes) -> aiocoap.Message:
        try:
            kind, tag, values = frames.device_read_command(payload)
        except ValueError as exc:
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=str(exc).encode())
        status = 0
        if kind == frames.TYPES["config_update"]:
            update = {**self.config, **values}
            if update["transmission_interval"] < update["measurement_interval"] or not all(
                1 <= update[k] <= frames.MAX_INTERVAL
                for k in ("measurement_interval", "transmission_interval")
            ):
                status = 1
            else:
                self.config = update
        elif kind != frames.TYPES["config_read"]:
            status = 2
        answer = frames.device_answer(tag, status, self.config)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=answer, content_format=OCTETS)


class _RelayDownstream(asyncio.DatagramProtocol):
    """Datagrams from the device back to one client."""

    def __init__(self, relay: LossyRelay, client: tuple[str, int]) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.forward_to_client(data, self.client)


class _RelayUpstream(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.from_client(data, addr)


class LossyRelay:
    """A UDP relay on ``host:port`` to ``target`` that drops ``loss`` of the datagrams."""

    def __init__(
        self,
        target: tuple[str, int],
        loss: float,
        host: str = "127.0.0.1",
        port: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.target = target
        self.loss = loss
        self.host = host
        self.port = port or free_port(host)
        self._random = random.Random(seed)  # noqa: S311 - loss simulation, not security
        self.forwarded = 0
        self.dropped = 0
        self._listener: asyncio.DatagramTransport | None = None
        self._clients: dict[tuple[str, int], _RelayDownstream] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def _drop(self) -> bool:
        if self._random.random() < self.loss:
            self.dropped += 1
            return True
        self.forwarded += 1
        return False

    async def start(self) -> LossyRelay:
        """Listen."""
        loop = asyncio.get_running_loop()
        self._listener, _ = await loop.create_datagram_endpoint(
            lambda: _RelayUpstream(self), local_addr=(self.host, self.port)
        )
        return self

    def from_client(self, data: bytes, client: tuple[str, int]) -> None:
        """A datagram towards the device."""
        if self._drop():
            return
        downstream = self._clients.get(client)
        if downstream is not None and downstream.transport is not None:
            downstream.transport.sendto(data)
            return
        task = asyncio.ensure_future(self._open(client, data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _open(self, client: tuple[str, int], first: bytes) -> None:
        downstream = self._clients.get(client)
        if downstream is None:
            downstream = self._clients[client] = _RelayDownstream(self, client)
            await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: downstream, remote_addr=self.target
            )
        if downstream.transport is not None:
            downstream.transport.sendto(first)

    def forward_to_client(self, data: bytes, client: tuple[str, int]) -> None:
        """A datagram from the device towards ``client``."""
        if self._listener is not None and not self._drop():
            self._listener.sendto(data, client)

    async def stop(self) -> None:
        """Close every socket."""
        for task in list(self._pending):
            task.cancel()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for downstream in self._clients.values():
            if downstream.transport is not None:
                downstream.transport.close()
        self._clients.clear()

    async def __aenter__(self) -> LossyRelay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _serve(args: argparse.Namespace) -> None:
    errors: dict[str, tuple[aiocoap.numbers.Code, str]] = {}
    for item in args.error or []:
        name, _, code = item.partition("=")
        major, _, minor = code.partition(".")
        errors[name] = (aiocoap.numbers.Code(int(major) * 32 + int(minor)), "simulated error")
    async with contextlib.AsyncExitStack() as stack:
        for n in range(args.devices):
            device_id = args.device_id if args.devices == 1 else f"{args.device_id}-{n}"
            port = args.port + n
            sensor_port = free_port(args.host) if args.loss else port
            await stack.enter_async_context(
                SimulatedCoapSensor(device_id, args.host, sensor_port, args.delay, errors=errors)
            )
            if args.loss:
                await stack.enter_async_context(
                    LossyRelay((args.host, sensor_port), args.loss, args.host, port)
                )
            print(f"coap sensor {device_id} on coap://{args.host}:{port}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m pusher_dev.coap_simulator``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device-id", default="coap-sensor-001")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5683)
    parser.add_argument(
        "--devices", type=int, default=1, help="sensors on consecutive ports from --port"
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--loss", type=float, default=0.0, help="share of datagrams dropped")
    parser.add_argument(
        "--error", action="append", help="RESOURCE=CODE, e.g. read_sensor=5.03 (repeatable)"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
