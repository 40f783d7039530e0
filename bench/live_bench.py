"""Live benchmark: how soon a command accepted by one API instance shows on another
instance's event stream and at a webhook receiver, and how many events per second one
stream and the webhook deliveries pass.

Starts the embedded Kafka-compatible broker and two ``pusher api`` processes on the same
topics (A accepts commands and delivers webhooks, B serves the stream; tracker on A), and
an aiohttp webhook receiver in this process. Latency: commands POSTed to A at a fixed rate,
timed from the POST to the ``queued`` event on B's stream and at the receiver. Throughput:
status events produced straight to the results topic, timed until the stream and the
receiver have all of them.

Writes its section into docs/benchmarks.md (between the live markers). Run with `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from aiokafka import AIOKafkaProducer
from httpx_sse import aconnect_sse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mqtt_bench import write_section  # noqa: E402
from pusher_dev.embedded_kafka import EmbeddedKafka, free_port  # noqa: E402

from preservarium_pusher_api.core.contract import CommandStatus, StatusEvent  # noqa: E402

START, END = "<!-- live-bench:start -->", "<!-- live-bench:end -->"
PUSHER = str(Path(sys.executable).with_name("pusher"))
SECRET = "bench-webhook-secret-0123456789"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


class Watch:
    """When each request_id's queued event (or any event) arrived, on the stream and at the
    receiver."""

    def __init__(self) -> None:
        self.stream: dict[str, float] = {}
        self.hooks: dict[str, float] = {}
        self.stream_count = 0
        self.hook_count = 0

    async def read_stream(self, base_url: str, opened: asyncio.Event) -> None:
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=120)) as http,
            aconnect_sse(http, "GET", "/api/v1/events") as source,
        ):
            async for message in source.aiter_sse():
                if not message.data:
                    opened.set()
                    continue
                self.stream_count += 1
                self.stream.setdefault(json.loads(message.data)["request_id"], time.perf_counter())

    async def hook(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.hook_count += 1
        self.hooks.setdefault(body["data"].get("request_id", ""), time.perf_counter())
        return web.Response(status=204)


def start_api(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [PUSHER, "api", "--port", str(port)]
    process = subprocess.Popen(
        argv, env={**env, "API_PORT": str(port)}, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"pusher api on {port} did not become ready (see {log})")


async def until(check: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return False


async def measure(args: argparse.Namespace, kafka: str, work: Path) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    receiver_port = free_port()
    hooks = work / "webhooks.json"
    hooks.write_text(json.dumps({"subscriptions": [
        {"name": "bench", "url": f"http://127.0.0.1:{receiver_port}/hook", "secret": SECRET},
    ]}))  # fmt: skip
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_COMMAND_TOPIC": f"live-{suffix}",
        "KAFKA_RESULT_TOPIC": f"live-{suffix}-results",
        "KAFKA_PRESENCE_TOPIC": f"live-{suffix}-presence",
        "KAFKA_CONSUMER_REBALANCE_TIMEOUT_MS": "300",
        "STATUS_STORE_URL": f"sqlite:///{work}/status.db",
        "TRACKER_GROUP_ID": f"live-{suffix}-tracker",
        "WEBHOOK_GROUP_ID": f"live-{suffix}-webhooks",
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
    }
    a_port, b_port = free_port(), free_port()
    accepting = start_api({**env, "WEBHOOKS_PATH": str(hooks)}, a_port, work / "api-a.log")
    watching = start_api({**env, "TRACKER_ENABLED": "false"}, b_port, work / "api-b.log")
    watch = Watch()
    app = web.Application()
    app.router.add_post("/hook", watch.hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver_port).start()
    opened = asyncio.Event()
    reader = asyncio.create_task(watch.read_stream(f"http://127.0.0.1:{b_port}", opened))
    try:
        await asyncio.wait_for(opened.wait(), 30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a_port}", timeout=10) as http:
            body = {"device_id": "pico-w-lab-001", "command_type": "control_led",
                    "payload": {"pin": 25, "state": True}, "protocol": "mqtt"}  # fmt: skip
            # the webhook group starts at the end of the topics once it has joined
            while not watch.hooks:
                await http.post("/api/v1/commands", json=body)
                await asyncio.sleep(0.5)
            await asyncio.sleep(1)
            sent: dict[str, float] = {}
            interval = 1 / args.rate
            started = time.perf_counter()
            for index in range(args.commands):
                await asyncio.sleep(max(0.0, started + index * interval - time.perf_counter()))
                posted = time.perf_counter()
                answer = await http.post("/api/v1/commands", json=body)
                sent[answer.json()["request_id"]] = posted
        await until(lambda: all(r in watch.stream and r in watch.hooks for r in sent), 60)
        stream_ms = [(watch.stream[r] - t) * 1000 for r, t in sent.items() if r in watch.stream]
        hook_ms = [(watch.hooks[r] - t) * 1000 for r, t in sent.items() if r in watch.hooks]

        # throughput: status events straight to the results topic, distinct commands
        stream_before, hooks_before = watch.stream_count, watch.hook_count
        producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
        await producer.start()
        try:
            produced = time.perf_counter()
            acks = []
            for _ in range(args.events):
                event = StatusEvent(
                    request_id=str(uuid.uuid4()), device_id="pico-w-lab-001",
                    status=CommandStatus.SENT, occurred_at=datetime.now(UTC), source="bench",
                )  # fmt: skip
                acks.append(await producer.send(
                    env["KAFKA_RESULT_TOPIC"], event.model_dump_json().encode(),
                    key=event.request_id.encode(),
                ))  # fmt: skip
            await asyncio.gather(*acks)
        finally:
            await producer.stop()
        await until(lambda: watch.stream_count - stream_before >= args.events, 120)
        stream_done = time.perf_counter()
        await until(lambda: watch.hook_count - hooks_before >= args.events, 300)
        hooks_done = time.perf_counter()
        return {
            "commands": args.commands,
            "rate": args.rate,
            "stream_seen": len(stream_ms),
            "hooks_seen": len(hook_ms),
            "stream_p50": percentile(stream_ms, 0.5),
            "stream_p99": percentile(stream_ms, 0.99),
            "hook_p50": percentile(hook_ms, 0.5),
            "hook_p99": percentile(hook_ms, 0.99),
            "events": args.events,
            "stream_events": watch.stream_count - stream_before,
            "hook_events": watch.hook_count - hooks_before,
            "stream_rate": (watch.stream_count - stream_before) / (stream_done - produced),
            "hook_rate": (watch.hook_count - hooks_before) / (hooks_done - produced),
        }
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await runner.cleanup()
        for process in (accepting, watching):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def render(result: dict[str, Any]) -> str:
    command = "python bench/live_bench.py  (part of make bench)"
    return f"""{START}
## Live: event stream and webhooks

Command: `{command}` — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()},
{os.cpu_count()} cores; embedded broker, two `pusher api` processes (A accepts and
delivers webhooks, B serves the stream), receiver and load in the bench process.

| figure | measured |
|---|---:|
| POST to A → `queued` on B's stream, {result["commands"]} commands at {result["rate"]}/s: p50 / p99 | {result["stream_p50"]:.1f} / {result["stream_p99"]:.1f} ms ({result["stream_seen"]} seen) |
| POST to A → webhook delivery of `queued`: p50 / p99 | {result["hook_p50"]:.1f} / {result["hook_p99"]:.1f} ms ({result["hooks_seen"]} seen) |
| one stream, {result["events"]} status events produced at once | {result["stream_rate"]:,.0f} events/s ({result["stream_events"]} received) |
| webhooks, same events (distinct commands, concurrency 8) | {result["hook_rate"]:,.0f} deliveries/s ({result["hook_events"]} received) |

Each stream has its own Kafka reader; a receiver answering 204 at once bounds the webhook
figure by the dispatcher's HTTP client and the receiver, both Python on the same 2 cores.
{END}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    broker = EmbeddedKafka().start()
    try:
        with tempfile.TemporaryDirectory() as work:
            result = asyncio.run(measure(args, broker.bootstrap_servers, Path(work)))
    finally:
        broker.stop()
    section = render(result)
    print(section)
    write_section(args.output, START, END, section)


if __name__ == "__main__":
    main()
