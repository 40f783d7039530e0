"""CoAP benchmark: connector deliveries/s vs raw aiocoap requests, same sensors, same run.

N ``read_sensor`` commands (CON, JSON) for D simulated sensors are produced to Kafka first;
the CoAP connector (in this process) is started and timed until every command's response
was turned into a ``succeeded`` event. The same N requests are then sent with a raw aiocoap
client, one sequential lane per sensor like the connector's (aiocoap runs one CON
exchange per peer at a time anyway). The sensors run in one separate process.

Writes its section into docs/benchmarks.md (between the coap markers). Run with `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiocoap

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from charts import save  # noqa: E402
from mqtt_bench import cli, connector_throughput, create_topics, produce_commands  # noqa: E402
from pusher_dev.embedded_kafka import EmbeddedKafka  # noqa: E402

from connectors.coap.transport import CoapTransport  # noqa: E402
from connectors.runtime import ConnectorRuntime  # noqa: E402
from connectors.settings import CoapSettings  # noqa: E402

START, END = "<!-- coap-bench:start -->", "<!-- coap-bench:end -->"
PAYLOAD = {"channel": 2}


def free_port_range(count: int) -> int:
    """A first UDP port with ``count`` free ports after it."""
    for base in range(20000, 60000, count + 7):
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free UDP port range")


def start_sensors(base_port: int, devices: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "pusher_dev.coap_simulator",
            "--port", str(base_port), "--devices", str(devices), "--device-id", "bench-dev"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log.open("ab"), cwd=ROOT)
    assert process.stdout is not None
    for _ in range(devices):
        if not process.stdout.readline():
            raise RuntimeError(f"sensors did not start: {log.read_text()[-500:]}")
    return process


async def connector_rate(kafka: str, base_port: int, total: int, devices: int, work: Path) -> float:
    topic = f"bench-coap-{uuid.uuid4().hex[:6]}"
    registry = work / "devices.json"
    registry.write_text(json.dumps({"devices": {
        f"bench-dev-{n}": {"protocol": "coap",
                           "address": {"host": "127.0.0.1", "port": base_port + n}}
        for n in range(devices)
    }}))  # fmt: skip
    settings = CoapSettings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap_servers=kafka,
        kafka_enable_idempotence=False,
        kafka_consumer_rebalance_timeout_ms=300,
        kafka_command_topic=topic,
        kafka_result_topic=topic + "-results",
        kafka_presence_topic=topic + "-presence",
        kafka_topic_partitions=6,
        connector_group_id=topic,
        connector_metrics_port=0,
        device_registry_path=registry,
        log_level="WARNING",
    )
    await create_topics(settings)
    await produce_commands(kafka, topic, total, devices, "coap", "read_sensor", PAYLOAD)
    runtime = ConnectorRuntime(settings, CoapTransport(settings))
    return await connector_throughput(runtime, "succeeded", total)


async def raw_rate(base_port: int, total: int, devices: int) -> float:
    context = await aiocoap.Context.create_client_context()
    payload = json.dumps(PAYLOAD, separators=(",", ":")).encode()
    try:

        async def lane(device: int) -> None:
            uri = f"coap://127.0.0.1:{base_port + device}/read_sensor"
            for _ in range(total // devices):
                message = aiocoap.Message(
                    code=aiocoap.POST, uri=uri, payload=payload, content_format=50
                )
                response = await context.request(message).response
                assert response.code.is_successful()

        started = time.perf_counter()
        await asyncio.gather(*(lane(d) for d in range(devices)))
        return (total // devices * devices) / (time.perf_counter() - started)
    finally:
        await context.shutdown()


def render(rates: dict[str, float], args: argparse.Namespace) -> str:
    ratio = rates["connector"] / rates["raw"]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""{START}
## CoAP connector — measured {when}, Python {platform.python_version()}, {os.cpu_count()} cores

{args.total:,} `read_sensor` commands (CON, JSON) to {args.devices} simulated sensors (aiocoap
servers in one separate process) on loopback; Kafka: the embedded broker. Reproduce with
`make bench` (or `.venv/bin/python bench/coap_bench.py`).

| target | requests/s |
|---|---:|
| CoAP connector (Kafka → lanes → CON POST → response → `sent`/`delivered`/`succeeded` events) | {rates["connector"]:,.0f} |
| raw aiocoap client, one sequential lane per sensor | {rates["raw"]:,.0f} |

**Ratio connector / raw aiocoap: {ratio:.2f}×** (target ≥ 0.8×). Per command the connector also produces
three status events to Kafka and journals the request_id before sending.
{END}
"""


async def measure(args: argparse.Namespace) -> str:
    base_port = free_port_range(args.devices)
    with EmbeddedKafka() as broker, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sensors = start_sensors(base_port, args.devices, work / "sensors.log")
        try:
            rates = {
                "connector": await connector_rate(
                    broker.bootstrap_servers, base_port, args.total, args.devices, work
                ),
                "raw": await raw_rate(base_port, args.total, args.devices),
            }
        finally:
            sensors.terminate()
            try:
                sensors.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sensors.kill()
    save("coap", rates)
    return render(rates, args)


if __name__ == "__main__":
    cli(__doc__, START, END, measure)
