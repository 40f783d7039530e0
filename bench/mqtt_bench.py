"""MQTT benchmarks: connector delivery rate vs raw aiomqtt, and end-to-end latency open-loop.

1. Delivery rate. N commands for D devices are produced to Kafka first; the MQTT connector
   (in this process) is started and timed until the broker acknowledged all N publishes
   (QoS 1). The same N messages are then published with raw aiomqtt QoS 1, one
   sequential publisher per device like the connector's on_ack lanes. Same broker, same run.
2. Latency. API (with tracker), connector and Pico W simulators run as separate processes;
   wrk offers a constant rate; latency = API accept → the connector's `succeeded`.

Writes its section into docs/benchmarks.md (between the mqtt markers). Run with `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pusher_dev.embedded_kafka import EmbeddedKafka, free_port  # noqa: E402
from pusher_dev.mosquitto import PrivateMosquitto  # noqa: E402

from connectors.mqtt.transport import MqttTransport  # noqa: E402
from connectors.runtime import ConnectorRuntime  # noqa: E402
from connectors.settings import MqttSettings  # noqa: E402
from preservarium_pusher_api.core.contract import CommandMessage, command_headers  # noqa: E402

START, END = "<!-- mqtt-bench:start -->", "<!-- mqtt-bench:end -->"


def connector_settings(
    kafka: str, mqtt: PrivateMosquitto, state: Path, **extra: Any
) -> MqttSettings:
    return MqttSettings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap_servers=kafka,
        kafka_enable_idempotence=False,
        kafka_consumer_rebalance_timeout_ms=300,
        mqtt_broker_url=mqtt.url,
        mqtt_client_id=f"bench-{uuid.uuid4().hex[:6]}",
        connector_metrics_port=0,
        log_level="WARNING",
        **extra,
    )


async def produce_commands(
    kafka: str,
    topic: str,
    total: int,
    devices: int,
    protocol: str = "mqtt",
    command_type: str = "control_led",
    payload: dict[str, Any] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    await producer.start()
    try:
        now = datetime.now(UTC)
        futures = []
        for n in range(total):
            message = CommandMessage(
                request_id=str(uuid.uuid4()),
                device_id=f"bench-dev-{n % devices}",
                command_type=command_type,
                payload=payload if payload is not None else {"pin": 25, "state": True},
                protocol=protocol,
                created_at=now,
                expires_at=now + timedelta(minutes=10),
                timeout_seconds=600,
            )
            futures.append(
                await producer.send(
                    topic,
                    message.model_dump_json().encode(),
                    key=message.device_id.encode(),
                    headers=command_headers(message),
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def create_topics(settings: Any) -> None:
    """The API's topics with their partitions, before any consumer joins."""
    from preservarium_pusher_api.metrics import PusherMetrics
    from preservarium_pusher_api.services.kafka_service import KafkaService

    service = KafkaService(settings, PusherMetrics())
    await service.start()
    await asyncio.wait_for(service.wait_connected(), 30)
    await service.stop()


def write_section(output: Path, start: str, end: str, section: str) -> None:
    """Replace (or append) a marked section of docs/benchmarks.md."""
    text = output.read_text() if output.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section.strip() + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section
    output.write_text(text)


async def connector_rate(
    kafka: str, mqtt: PrivateMosquitto, total: int, devices: int, **extra: Any
) -> float:
    topic = f"bench-mqtt-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as state:
        settings = connector_settings(
            kafka,
            mqtt,
            Path(state),
            kafka_command_topic=topic,
            kafka_result_topic=topic + "-results",
            kafka_presence_topic=topic + "-presence",
            kafka_topic_partitions=6,
            connector_group_id=topic,
            **extra,
        )
        await create_topics(settings)
        await produce_commands(kafka, topic, total, devices)
        return await connector_throughput(
            ConnectorRuntime(settings, MqttTransport(settings)), "delivered", total
        )


async def connector_throughput(runtime: ConnectorRuntime, outcome: str, total: int) -> float:
    """Run ``runtime`` over the produced commands: ``outcome`` events per second, timed from
    the first one to the last (consumer-group join excluded). Fails if any command failed."""
    counted = runtime.metrics.deliveries.labels(runtime.protocol, outcome)
    failed = runtime.metrics.deliveries.labels(runtime.protocol, "failed")
    task = asyncio.create_task(runtime.run())
    started = None
    while counted._value.get() + failed._value.get() < total:
        if started is None and counted._value.get() > 0:
            started = time.perf_counter()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    runtime.stop()
    await task
    if failed._value.get():
        raise RuntimeError(f"{failed._value.get():.0f} commands failed")
    return (total - 1) / elapsed if elapsed else 0.0


async def raw_rate(mqtt: PrivateMosquitto, total: int, devices: int) -> float:
    payload = json.dumps({"request_id": str(uuid.uuid4()), "task": "control_led",
                          "parameters": {"pin": 25, "state": True}}).encode()  # fmt: skip
    async with aiomqtt.Client(mqtt.host, mqtt.port, max_inflight_messages=200) as client:

        async def lane(device: int) -> None:
            for _ in range(total // devices):
                await client.publish(f"lab/bench-dev-{device}/command", payload, qos=1)

        started = time.perf_counter()
        await asyncio.gather(*(lane(d) for d in range(devices)))
        return (total // devices * devices) / (time.perf_counter() - started)


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)


async def latency(kafka: str, mqtt: PrivateMosquitto, rate: int, seconds: int, devices: int,
                  work: Path) -> dict[str, float]:  # fmt: skip
    suffix = uuid.uuid4().hex[:6]
    api_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_COMMAND_TOPIC": f"lat-{suffix}",
        "KAFKA_RESULT_TOPIC": f"lat-{suffix}-results",
        "KAFKA_PRESENCE_TOPIC": f"lat-{suffix}-presence",
        "KAFKA_CONSUMER_REBALANCE_TIMEOUT_MS": "300",
        # the embedded broker holds a fetch for the whole wait even when records arrive
        "KAFKA_CONSUMER_FETCH_MAX_WAIT_MS": "10",
        "STATUS_STORE_URL": f"sqlite:///{work}/status-{suffix}.db",
        "API_PORT": str(api_port),
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT": "",
        "MQTT_BROKER_URL": mqtt.url,
        "MQTT_TOPIC_PREFIX": "lat",
        "MQTT_CLIENT_ID": f"lat-connector-{suffix}",
        "CONNECTOR_METRICS_PORT": str(metrics_port),
        "CONNECTOR_GROUP_ID": f"lat-{suffix}",
    }
    device_ids = [f"lat-pico-{n}" for n in range(devices)]
    procs = [spawn([sys.executable, "-m", "pusher_cli", "api"], env, work / "api.log")]
    base = f"http://127.0.0.1:{api_port}"
    async with httpx.AsyncClient(base_url=base, timeout=30,
                                 limits=httpx.Limits(max_connections=200)) as client:  # fmt: skip
        for _ in range(300):
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        procs.append(spawn([sys.executable, "-m", "connectors.mqtt"], env, work / "connector.log"))
        sim_argv = [sys.executable, "-m", "pusher_dev.pico_simulator",
                    "--broker", mqtt.url, "--prefix", "lat"]  # fmt: skip
        for device_id in device_ids:
            sim_argv += ["--device-id", device_id]
        procs.append(spawn(sim_argv, env, work / "sims.log"))
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{metrics_port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        # warm-up: one command per device
        for device_id in device_ids:
            await client.post("/api/v1/commands", json={"device_id": device_id,
                              "command_type": "control_led", "payload": {"pin": 25, "state": True},
                              "protocol": "mqtt"})  # fmt: skip
        await asyncio.sleep(2)
        began = time.time()
        achieved = await asyncio.to_thread(paced_load, base, rate, seconds, device_ids, work)
        await asyncio.sleep(10)  # the last answers come back and the tracker catches up
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)
    return store_latencies(work / f"status-{suffix}.db", began, rate, achieved)


PACED_LUA = """
-- constant arrival rate: every connection waits its share of the interval before each request
local devices = {{{devices}}}
local n = 0
request = function()
  n = n + 1
  local body = '{{"device_id": "' .. devices[(n % #devices) + 1] ..
    '", "command_type": "control_led", "payload": {{"pin": 25, "state": true}}, "protocol": "mqtt"}}'
  return wrk.format("POST", "/api/v1/commands", {{["Content-Type"] = "application/json"}}, body)
end
delay = function() return {delay_ms} end
"""


def paced_load(base: str, rate: int, seconds: int, device_ids: list[str], work: Path) -> float:
    """wrk with a per-connection delay so that the connections together offer ``rate``/s."""
    connections = 20
    script = work / "paced.lua"
    script.write_text(
        PACED_LUA.format(
            devices=", ".join(f'"{d}"' for d in device_ids),
            delay_ms=int(1000 * connections / rate),
        )
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), base],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.startswith("Requests/sec"))
    return float(line.split()[1])


def store_latencies(db: Path, began: float, rate: int, achieved: float) -> dict[str, float]:
    """API accept (created_at) → `succeeded` (the connector's event time), from the store."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT c.created_at, h.at FROM pusher_commands c JOIN pusher_command_history h "
            "ON h.request_id = c.request_id AND h.status = 'succeeded' WHERE c.created_at >= ?",
            (began,),
        ).fetchall()
        total = conn.execute(
            "SELECT count(*) FROM pusher_commands WHERE created_at >= ?", (began,)
        ).fetchone()[0]
    latencies = sorted((at - created) * 1000 for created, at in rows)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {
        "offered": rate, "achieved": achieved, "count": total, "completed": len(latencies),
        "errors": total - len(latencies), "p50": pct(0.50), "p99": pct(0.99),
        "p999": pct(0.999), "mean": statistics.fmean(latencies),
    }  # fmt: skip


def render(rates: dict[str, float], lat: dict[str, float], args: argparse.Namespace) -> str:
    ratio = rates["connector"] / rates["raw"]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""{START}
## MQTT connector — measured {when}, Python {platform.python_version()}, {os.cpu_count()} cores

Broker: a private Mosquitto on loopback; Kafka: the embedded broker. Reproduce with
`make bench` (or `.venv/bin/python bench/mqtt_bench.py`).

### Delivery rate: {args.total:,} commands to {args.devices} devices, QoS 1

| target | messages/s |
|---|---:|
| MQTT connector (Kafka → lanes → publish, PUBACK → `delivered` event) | {rates["connector"]:,.0f} |
| raw aiomqtt QoS 1, one sequential publisher per device | {rates["raw"]:,.0f} |

**Ratio connector / raw aiomqtt: {ratio:.2f}×** (target ≥ 0.5×). The connector also
writes two status events (`sent`, `delivered`) to Kafka per command and journals each
request_id before publishing.

### End-to-end latency, open loop at {lat["offered"]:.0f} commands/s for {args.seconds} s

From the API accepting the command (`created_at`, the 202) to the connector reporting the
device's `succeeded` answer, read from the status store. Load: wrk, 20 connections each
pausing its share of the interval before every request (a constant offered rate while
answers are fast). API (with tracker, SQLite store), connector, {args.devices} simulated
Pico W and wrk each in their own process. "not completed" = accepted, no `succeeded` yet
10 s after the load ended. Consumers fetch with
`KAFKA_CONSUMER_FETCH_MAX_WAIT_MS=10` (the embedded broker holds a fetch for the whole
wait; Apache Kafka answers as soon as a record arrives).

| offered /s | achieved /s | commands | succeeded | not completed | p50 ms | p99 ms | p99.9 ms | mean ms |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| {lat["offered"]:.0f} | {lat["achieved"]:.0f} | {lat["count"]:.0f} | {lat["completed"]:.0f} | {lat["errors"]:.0f} | {lat["p50"]:.1f} | {lat["p99"]:.1f} | {lat["p999"]:.1f} | {lat["mean"]:.1f} |

Target p99 ≤ 50 ms: **{"met" if lat["p99"] <= 50 else "not met"}** ({lat["p99"]:.1f} ms).
{END}
"""


async def measure(args: argparse.Namespace) -> str:
    with (
        EmbeddedKafka() as broker,
        PrivateMosquitto() as mqtt,
        tempfile.TemporaryDirectory() as work,
    ):
        rates = {
            "connector": await connector_rate(
                broker.bootstrap_servers, mqtt, args.total, args.devices
            ),
            "raw": await raw_rate(mqtt, args.total, args.devices),
        }
        lat = await latency(
            broker.bootstrap_servers, mqtt, args.rate, args.seconds, args.devices, Path(work)
        )
    return render(rates, lat, args)


def cli(doc: str, start: str, end: str, measure: Any, **options: int) -> None:
    """Parse ``--total``, ``--devices``, ``--output`` and ``options``, measure, write the
    section between ``start`` and ``end`` in the output file, print it."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    defaults = {"total": 5000, "devices": 20, **options}
    for name, default in defaults.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    section = asyncio.run(measure(args))
    write_section(args.output, start, end, section)
    print(section)


if __name__ == "__main__":
    cli(__doc__, START, END, measure, rate=300, seconds=20)
