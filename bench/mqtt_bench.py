"""MQTT benchmarks: connector delivery rate vs raw aiomqtt, and end-to-end latency open-loop.

1. Delivery rate. N commands for D devices are produced to Kafka first; the MQTT connector
   (in this process) is started and timed until the broker acknowledged all N publishes
   (QoS 1). The same N messages are then published with raw aiomqtt QoS 1, one
   sequential publisher per device like the connector's on_ack lanes. Same broker, same run.
2. Latency against offered rate (the knee curve). API (with tracker), connector, Pico W
   simulators and an open-loop load generator run as separate processes; each rate is
   offered for a few seconds on the same stack; latency = API accept → `succeeded`.

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
sys.path.insert(0, str(ROOT / "bench"))

from charts import knee_chart, save  # noqa: E402
from pusher_dev.embedded_kafka import EmbeddedKafka, free_port  # noqa: E402
from pusher_dev.mosquitto import PrivateMosquitto  # noqa: E402

from connectors.mqtt.transport import NO_DELAY, MqttTransport  # noqa: E402
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


async def create_topics(settings: Any, partitions: int = 6) -> None:
    """The commands, results and presence topics with their partitions, before any consumer
    joins (the embedded broker would create them with its own default)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        names = (
            settings.kafka_command_topic,
            settings.kafka_result_topic,
            settings.kafka_presence_topic,
        )
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


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
    async with aiomqtt.Client(
        mqtt.host, mqtt.port, max_inflight_messages=200, socket_options=[NO_DELAY]
    ) as client:
        client.pending_calls_threshold = 1000  # 20 lanes publishing at once is the point

        async def lane(device: int) -> None:
            for _ in range(total // devices):
                await client.publish(f"lab/bench-dev-{device}/command", payload, qos=1)

        started = time.perf_counter()
        await asyncio.gather(*(lane(d) for d in range(devices)))
        return (total // devices * devices) / (time.perf_counter() - started)


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)


async def wait_http(url: str, attempts: int = 300) -> None:
    """Poll ``url`` until it answers 200 (bounded: ``attempts`` times 0.1 s)."""
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(attempts):
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process, then SIGKILL whatever has not ended within 20 s."""
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + 20
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


async def knee(kafka: str, mqtt: PrivateMosquitto, rates: list[int], seconds: int,
               devices: int, work: Path) -> list[dict[str, Any]]:  # fmt: skip
    """End-to-end latency at each offered rate, on one running stack."""
    suffix = uuid.uuid4().hex[:6]
    api_port, metrics_port = free_port(), free_port()
    db = work / f"status-{suffix}.db"
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
        "STATUS_STORE_URL": f"sqlite:///{db}",
        "API_PORT": str(api_port),
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT": "",
        "MQTT_BROKER_URL": mqtt.url,
        "MQTT_TOPIC_PREFIX": "lat",
        "CONNECTOR_ID": f"bench-{suffix}",
        "CONNECTOR_METRICS_PORT": str(metrics_port),
        "CONNECTOR_GROUP_ID": f"lat-{suffix}",
    }
    device_ids = [f"lat-pico-{n}" for n in range(devices)]
    base = f"http://127.0.0.1:{api_port}"
    procs = [spawn([sys.executable, "-m", "pusher_cli", "api"], env, work / "api.log")]
    steps: list[dict[str, Any]] = []
    try:
        await wait_http(base + "/health/ready")
        procs.append(spawn([sys.executable, "-m", "connectors.mqtt"], env, work / "connector.log"))
        sim_argv = [sys.executable, "-m", "pusher_dev.pico_simulator",
                    "--broker", mqtt.url, "--prefix", "lat"]  # fmt: skip
        for device_id in device_ids:
            sim_argv += ["--device-id", device_id]
        procs.append(spawn(sim_argv, env, work / "sims.log"))
        await wait_http(f"http://127.0.0.1:{metrics_port}/health")
        await asyncio.to_thread(offered_load, base, 50, 2, device_ids)  # warm-up
        await drain(db, time.time() - 5, 20)
        for rate in rates:
            began = time.time()
            load = await asyncio.to_thread(offered_load, base, rate, seconds, device_ids)
            drained = await drain(db, began, 20)
            steps.append({**load, **store_latencies(db, began), "drain_seconds": drained})
            print(f"  {rate}/s: {steps[-1]}", file=sys.stderr)
    finally:
        stop_all(procs)
    return steps


def offered_load(base: str, rate: int, seconds: int, device_ids: list[str]) -> dict[str, Any]:
    """The open-loop generator (bench/loadgen.py) in its own process, bounded in time."""
    argv = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--url",
            base + "/api/v1/commands", "--rate", str(rate), "--seconds", str(seconds)]  # fmt: skip
    for device_id in device_ids:
        argv += ["--device", device_id]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def drain(db: Path, since: float, within: float) -> float:
    """Wait until every command created since ``since`` is recorded and final (at most
    ``within`` s); the seconds it took."""
    import sqlite3

    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                open_ = conn.execute(
                    "SELECT count(*) FROM pusher_commands WHERE created_at >= ? AND "
                    "status_rank < 3", (since,)
                ).fetchone()[0]  # fmt: skip
        except sqlite3.Error:
            open_ = 1
        if not open_:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(0.5)  # rows of the last accepted commands reach the store
    return time.monotonic() - started


def store_latencies(db: Path, began: float) -> dict[str, float]:
    """API accept (created_at) → `succeeded` (the connector's event time), from the store."""
    import sqlite3

    with sqlite3.connect(db, timeout=5) as conn:
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
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    return {
        "count": total, "completed": len(latencies), "errors": total - len(latencies),
        "p50": pct(0.50), "p99": pct(0.99), "p999": pct(0.999),
        "mean": statistics.fmean(latencies) if latencies else 0.0,
    }  # fmt: skip


def render(rates: dict[str, float], steps: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ratio = rates["connector"] / rates["raw"]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for step in steps:
        saturated = "yes" if step["generator_cpu"] >= 0.9 else "no"
        non_202 = step["sent"] - step["answers"].get("202", 0)
        rows.append(
            f"| {step['offered']:,.0f} | {step['achieved']:,.0f} | {step['skipped']:,} "
            f"| {saturated} | {step['generator_cpu']:.0%} | {step['worst_behind_ms']:.0f} "
            f"| {non_202} "
            f"| {step['count']:,.0f} | {step['errors']:,.0f} | {step['p50']:.1f} "
            f"| {step['p99']:.1f} | {step['p999']:.1f} | {step['http_p99_ms']:.1f} |"
        )
    good = [s for s in steps if s["p99"] <= 100 and not s["errors"] and s["count"]
            and s["achieved"] >= 0.95 * s["offered"]]  # fmt: skip
    knee_rate = max((s["offered"] for s in good), default=0)
    at_300 = min(steps, key=lambda s: abs(s["offered"] - 300))
    table = "\n".join(rows)
    return f"""{START}
## MQTT connector and end to end — measured {when}, Python {platform.python_version()}, {os.cpu_count()} cores

Broker: a private Mosquitto on loopback; Kafka: the embedded broker. Reproduce with
`make bench` (or `.venv/bin/python bench/mqtt_bench.py`).

### P4 delivery rate: {args.total:,} commands to {args.devices} devices, QoS 1

| target | messages/s |
|---|---:|
| MQTT connector (Kafka → lanes → journal → publish, PUBACK → `delivered` event) | {rates["connector"]:,.0f} |
| raw aiomqtt QoS 1, one sequential publisher per device | {rates["raw"]:,.0f} |

**Ratio connector / raw aiomqtt: {ratio:.2f}×** (target ≥ 0.8×). Per command the connector
also journals the request_id (acks=all) before publishing and writes two status events
(`sent`, `delivered`).

### P3 end to end, open loop, {args.seconds} s per rate (the knee curve)

From the API accepting the command (`created_at`, the 202) to the connector reporting the
device's `succeeded` answer, read from the status store. API (with its tracker, SQLite
store), MQTT connector, {args.devices} simulated Pico W (one process) and the load generator
each run in their own process on the same {os.cpu_count()} cores. The generator
(`bench/loadgen.py`, aiohttp) sends request *i* at *start + i/rate* whatever the answers do
(at most 256 open: a request due while 256 are unanswered is not sent and counted — the
service is saturated); "behind" is how late the generator fell behind its schedule,
"generator CPU" its own share of a core — at ≥ 90 % the generator itself is saturated
and the row measures it, not the service. "not completed" = accepted but not
`succeeded` 20 s after the load ended. Consumers fetch with
`KAFKA_CONSUMER_FETCH_MAX_WAIT_MS=10` (the embedded broker holds a fetch for the whole
wait; Apache Kafka answers as soon as a record arrives).

![End-to-end latency against offered rate](bench-knee.png)

| offered /s | achieved /s | not sent (256 open) | generator saturated | generator CPU | behind ms | non-202 | commands | not completed | p50 ms | p99 ms | p99.9 ms | HTTP p99 ms |
|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{table}

At {at_300["offered"]:.0f}/s: p99 {at_300["p99"]:.1f} ms, p99.9 {at_300["p999"]:.1f} ms
(targets ≤ 50 ms and ≤ 100 ms: **{"met" if at_300["p99"] <= 50 and at_300["p999"] <= 100 and not at_300["errors"] else "not met"}**).
**Knee** (highest offered rate with every command completed, achieved ≥ 95 % of offered and
p99 ≤ 100 ms): **{knee_rate:,.0f} commands/s** (target ≥ 1,000: **{"met" if knee_rate >= 1000 else "not met"}**).
{END}
"""


async def measure(args: argparse.Namespace) -> str:
    rates_offered = [int(rate) for rate in args.rates.split(",")]
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
        print(f"  delivery: {rates}", file=sys.stderr)
        steps = await knee(
            broker.bootstrap_servers, mqtt, rates_offered, args.seconds, args.devices, Path(work)
        )
    save("mqtt", {**rates, "steps": steps})
    knee_chart(steps, args.output.parent / "bench-knee.png")
    return render(rates, steps, args)


def cli(doc: str, start: str, end: str, measure: Any, **options: Any) -> None:
    """Parse ``--total``, ``--devices``, ``--output`` and ``options``, measure, write the
    section between ``start`` and ``end`` in the output file, print it."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    defaults = {"total": 5000, "devices": 20, **options}
    for name, default in defaults.items():
        parser.add_argument(f"--{name}", type=type(default), default=default)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    section = asyncio.run(measure(args))
    write_section(args.output, start, end, section)
    print(section)


if __name__ == "__main__":
    cli(__doc__, START, END, measure, seconds=8, rates="100,200,300,500,1000,1500,2000")
