"""The `pusher` command as a user runs it: real processes, real ports, README examples."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pusher_dev.embedded_kafka import free_port, wait_for_port

from tests.conftest import KafkaTarget, SettingsFactory
from tests.kafka_helpers import read_records, value_of

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
PUSHER = str(Path(sys.executable).with_name("pusher"))


def wait_ready(base_url: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    """Poll /health/ready until 200; fail with the process output if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"process exited early:\n{process.stdout.read() if process.stdout else ''}"
            )
        try:
            if httpx.get(f"{base_url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("service did not become ready")


def stop(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> str:
    """Send ``sig``, wait for exit and return everything the process printed."""
    process.send_signal(sig)
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"process did not stop on signal {sig}:\n{output}") from None
    return output


@pytest.fixture
def api_env(kafka: KafkaTarget, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for a `pusher api` process against the test Kafka, unique topic."""
    topic = f"cli-{os.urandom(6).hex()}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": str(kafka.idempotence).lower(),
        "KAFKA_COMMAND_TOPIC": topic,
        "KAFKA_RESULT_TOPIC": f"{topic}-results",
        "API_PORT": str(free_port()),
        "LOG_FORMAT": "json",
        "STATUS_STORE_URL": f"sqlite:///{tmp_path}/status.db",
        "TRACKER_GROUP_ID": f"{topic}-tracker",
    }
    yield env


@pytest.mark.parametrize(
    "argv", [[PUSHER, "api"], [sys.executable, "-m", "preservarium_pusher_api"]]
)
async def test_pusher_api_serves_from_env_and_logs_json(
    api_env: dict[str, str], argv: list[str]
) -> None:
    """`pusher api` honours API_PORT and Kafka settings, logs JSON lines and stops on SIGTERM."""
    process = subprocess.Popen(
        argv, env=api_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    base_url = f"http://127.0.0.1:{api_env['API_PORT']}"
    try:
        wait_ready(base_url, process)
        body = {"device_id": "cli-dev", "command_type": "ping", "protocol": "http"}
        response = httpx.post(f"{base_url}/api/v1/commands", json=body, timeout=10)
        assert response.status_code == 202
    finally:
        output = stop(process, signal.SIGTERM)
    # uvicorn re-raises SIGTERM after its graceful shutdown.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    [record] = await read_records(
        api_env["KAFKA_BOOTSTRAP_SERVERS"], api_env["KAFKA_COMMAND_TOPIC"], 1
    )
    assert record.key == b"cli-dev"
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    accepted = [line for line in lines if line.get("event") == "command accepted"]
    assert accepted and accepted[0]["request_id"] == response.json()["request_id"]
    assert all("timestamp" in line and "level" in line for line in lines)


async def test_pusher_api_with_two_workers_on_a_new_store_serves_from_both(
    api_env: dict[str, str],
) -> None:
    """`pusher api --workers 2` on a store that does not exist yet: the schema is made once
    (not by both workers racing), both workers stay up and every command is accepted (a
    worker still connecting to Kafka says 503 with Retry-After, never loses one)."""
    process = subprocess.Popen(
        [PUSHER, "api", "--workers", "2"],
        env=api_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    base_url = f"http://127.0.0.1:{api_env['API_PORT']}"
    try:
        wait_ready(base_url, process)
        body = {"device_id": "cli-dev", "command_type": "ping", "protocol": "http"}
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:

            async def accepted() -> int:
                # readiness was answered by one worker; the other may still be connecting
                # to Kafka: it answers 503 with Retry-After, and the command is sent again
                for _ in range(20):
                    answer = await client.post("/api/v1/commands", json=body)
                    if answer.status_code != 503:
                        return answer.status_code
                    assert answer.headers["retry-after"]
                    await asyncio.sleep(0.5)
                return 503

            codes = await asyncio.gather(*(accepted() for _ in range(60)))
        assert codes == [202] * 60
    finally:
        output = stop(process, signal.SIGTERM)
    assert "Traceback" not in output and "died" not in output, output
    assert output.count("Application startup complete") == 2, output
    assert output.count("Application shutdown complete") == 2, output


def test_auth_without_keys_exits_with_a_clear_message(api_env: dict[str, str]) -> None:
    """`pusher api` refuses to start with ENABLE_AUTH but no key, naming the problem."""
    result = subprocess.run(
        [PUSHER, "api"],
        env={**api_env, "ENABLE_AUTH": "true", "API_KEYS": ""},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "no API key" in result.stderr


def readme_examples(language: str, marker: str) -> list[str]:
    """Every ```{language} block of the README that contains ``marker``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [block for block in blocks if marker in block]


def readme_curl_examples() -> list[str]:
    """Every ```bash block of the README that calls curl."""
    return readme_examples("bash", "curl ")


def test_readme_registry_and_json_examples_parse() -> None:
    """The YAML registries load with the connectors' own parser; the JSON shown is JSON."""
    from connectors.registry import parse_registry

    registries = readme_examples("yaml", "devices:")
    assert len(registries) >= 2
    for example in registries:
        assert parse_registry(example, ".yaml"), example
    documents = readme_examples("json", "")
    assert documents
    for example in documents:
        json.loads(example)


def json_documents(text: str) -> list[Any]:
    """The JSON documents printed one after another (one per curl call)."""
    decoder = json.JSONDecoder()
    documents, position = [], 0
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
    return documents


def check_answer(answer: dict[str, Any]) -> None:
    """Each kind of README answer is the success it shows."""
    if "results" in answer:  # batch
        assert all(item["success"] and item["request_id"] for item in answer["results"]), answer
    elif "items" in answer:  # list
        assert answer["items"] and all(item["request_id"] for item in answer["items"]), answer
    elif "history" in answer:  # status
        assert answer["history"][0] == {**answer["history"][0], "status": "queued", "source": "api"}
    else:  # single command
        assert answer["success"] and answer["request_id"], answer


async def wait_terminal(status_url: str, within: float = 30) -> dict[str, Any]:
    """Long-poll a status URL until the command is terminal."""
    import httpx

    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=15) as client:
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = (await client.get(status_url, params={"wait": 5})).json()
            if body["status"] in ("succeeded", "failed", "timed_out", "expired", "cancelled"):
                return body
    raise AssertionError(f"not terminal: {body}")


async def test_pusher_dev_runs_the_readme_examples_and_stops_cleanly(tmp_path: Path) -> None:
    """`pusher dev` serves the README curl examples: 202 with request ids and records keyed by
    device in Kafka, the status of a command just sent, the list."""
    examples = readme_curl_examples()
    assert len(examples) >= 2
    api_port, kafka_port, mqtt_port = free_port(), free_port(), free_port()
    argv = [PUSHER, "dev", "--api-port", str(api_port), "--kafka-port", str(kafka_port)]
    argv += ["--mqtt-port", str(mqtt_port), "--connector-port", str(free_port())]
    ot2_port = free_port()
    argv += ["--http-connector-port", str(free_port()), "--ot2-port", str(ot2_port)]
    argv += ["--coap-connector-port", str(free_port()), "--coap-port", str(free_port())]
    process = subprocess.Popen(
        argv,
        env={**os.environ, "STATUS_STORE_URL": f"sqlite:///{tmp_path}/status.db"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    base_url = f"http://127.0.0.1:{api_port}"
    expected_devices: list[str] = []
    try:
        wait_ready(base_url, process)
        for example in examples:
            script = example.replace("localhost:8000", f"127.0.0.1:{api_port}")
            result = subprocess.run(
                ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True
            )
            answers = json_documents(result.stdout)
            assert answers, example
            for answer in answers:
                check_answer(answer)
            expected_devices += re.findall(r'"device_id": "([^"]+)"', example)
        records = await read_records(
            f"127.0.0.1:{kafka_port}", "device_commands", len(expected_devices)
        )
        assert sorted(r.key.decode() for r in records if r.key) == sorted(expected_devices)
        assert all(value_of(r)["device_id"] == r.key.decode() for r in records if r.key)

        # each simulated device runs its example's command through its connector
        async def run_to_the_end(marker: str) -> dict[str, Any]:
            example = next(e for e in examples if marker in e)
            script = example.replace("localhost:8000", f"127.0.0.1:{api_port}")
            output = subprocess.run(
                ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True
            ).stdout
            request_id = json_documents(output)[0]["request_id"]
            final = await wait_terminal(f"{base_url}/api/v1/commands/{request_id}/status")
            assert final["status"] == "succeeded", final
            return final

        await run_to_the_end('"pico-w-lab-001"')
        mixed = await run_to_the_end('"ot2-lab-001"')
        assert mixed["result"]["total_ul"] == 180
        configured = await run_to_the_end('"coap-sensor-001"')
        assert configured["result"]["payload"]["config"]["measurement_interval"] == 60
        # the CLI and Python examples, as a newcomer pastes them (their asserts and exit
        # codes say whether they did what the README says)
        env = {**os.environ, "PUSHER_URL": base_url}
        for example in readme_examples("bash", "pusher "):
            script = example.replace(".venv/bin/pusher", PUSHER)
            result = await asyncio.to_thread(
                subprocess.run, ["bash", "-c", script], capture_output=True, text=True,
                timeout=90, env=env, cwd=ROOT, check=False,
            )  # fmt: skip
            assert result.returncode == 0, (example, result.stdout, result.stderr)
            assert "succeeded" in result.stdout, example
        for example in readme_examples("python", ""):
            script = example.replace("localhost:8000", f"127.0.0.1:{api_port}")
            result = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True,
                timeout=150, cwd=ROOT, check=False,
            )  # fmt: skip
            assert result.returncode == 0, (example, result.stdout, result.stderr)
    finally:
        output = stop(process, signal.SIGINT)
    assert "Kafka" in output and f"http://127.0.0.1:{api_port}" in output
    assert f"http://127.0.0.1:{api_port}/ui/" in output  # the dashboard
    assert not wait_for_port("127.0.0.1", kafka_port, timeout=0.5), "broker left running"
    assert not wait_for_port("127.0.0.1", api_port, timeout=0.5), "API left running"
    assert not wait_for_port("127.0.0.1", mqtt_port, timeout=0.5), "Mosquitto left running"
    assert not wait_for_port("127.0.0.1", ot2_port, timeout=0.5), "OT-2 agent left running"
    for component in ("[api]", "[mqtt connector]", "[http connector]", "[coap connector]",
                      "[ot2-agent]"):  # fmt: skip
        assert component in output, component


def test_pusher_dev_names_a_component_that_fails_at_start_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """The HTTP connector's port is taken: dev says which and why, exits 1, no orphans."""
    import socket

    api_port, kafka_port, mqtt_port, ot2_port = free_port(), free_port(), free_port(), free_port()
    taken = socket.create_server(("127.0.0.1", 0))
    http_port = taken.getsockname()[1]
    argv = [PUSHER, "dev", "--api-port", str(api_port), "--kafka-port", str(kafka_port),
            "--mqtt-port", str(mqtt_port), "--connector-port", str(free_port()),
            "--http-connector-port", str(http_port), "--ot2-port", str(ot2_port),
            "--coap-connector-port", str(free_port()), "--coap-port", str(free_port())]  # fmt: skip
    try:
        result = subprocess.run(
            argv,
            env={**os.environ, "STATUS_STORE_URL": f"sqlite:///{tmp_path}/status.db"},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            check=False,
        )
    finally:
        taken.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"pusher dev: http connector failed at start: ConfigurationError: cannot serve "
        f"health/metrics on 127.0.0.1:{http_port}: Address already in use"
    ) in result.stderr
    for port in (api_port, kafka_port, mqtt_port, ot2_port):
        assert not wait_for_port("127.0.0.1", port, timeout=0.5), f"port {port} left open"


async def test_pusher_tracker_alone_applies_events_and_serves_metrics(
    api_env: dict[str, str], tmp_path: Path
) -> None:
    """`pusher tracker` consumes the results topic into the store and stops on SIGTERM."""
    from aiokafka import AIOKafkaProducer

    from preservarium_pusher_api.core.contract import CommandStatus, StatusEvent, utc_now
    from preservarium_pusher_api.store import StatusStore

    metrics_port = free_port()
    env = {
        **api_env,
        "KAFKA_CONSUMER_REBALANCE_TIMEOUT_MS": "300",
        "SWEEP_INTERVAL_SECONDS": "0.2",
    }
    process = subprocess.Popen(
        [PUSHER, "tracker", "--metrics-port", str(metrics_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    request_id = "5b0c1a64-9a51-4f0e-8d7e-0c7b4a3e2f10"
    try:
        assert wait_for_port("127.0.0.1", metrics_port, timeout=15), "no metrics port"
        producer = AIOKafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
        await producer.start()
        try:
            event = StatusEvent(
                request_id=request_id,
                device_id="pico-w-lab-001",
                status=CommandStatus.DELIVERED,
                occurred_at=utc_now(),
                source="connector-mqtt-1",
            )
            await producer.send_and_wait(
                env["KAFKA_RESULT_TOPIC"], event.model_dump_json().encode(), key=b"k"
            )
        finally:
            await producer.stop()
        store = StatusStore(env["STATUS_STORE_URL"])
        try:
            deadline = time.monotonic() + 30
            record = None
            while record is None and time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                record = await store.get(request_id)
        finally:
            await store.stop()
        assert record is not None and record.status == CommandStatus.DELIVERED
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'pusher_command_status_total{protocol="unknown",status="delivered"} 1.0' in metrics
    finally:
        output = stop(process, signal.SIGTERM)
    assert process.returncode == 0, output
    assert "status tracker consuming" in output


async def test_pusher_watch_prints_the_events_of_a_device_as_json_lines(
    make_settings: SettingsFactory,
) -> None:
    """`pusher watch --device D --json --count 2` prints queued then sent for D, one JSON
    object per line, and exits 0."""
    from tests.conftest import command, serve
    from tests.integration.api.test_status_api import emit, status_event

    async with serve(make_settings()) as api:
        watch = await asyncio.create_subprocess_exec(
            PUSHER, "watch", "--device", "pico-watched", "--json", "--count", "2",
            env={**os.environ, "PUSHER_URL": api.base_url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(30):
                while api.app.state.events.serving == 0:
                    await asyncio.sleep(0.05)
            for device in ("pico-other", "pico-watched"):
                response = await api.client.post("/api/v1/commands", json=command(device_id=device))
                assert response.status_code == 202
            request_id = response.json()["request_id"]
            await emit(api.settings, status_event(request_id, "sent", device_id="pico-watched"))
            out, err = await asyncio.wait_for(watch.communicate(), 30)
        finally:
            if watch.returncode is None:
                watch.kill()
                await watch.wait()
    assert watch.returncode == 0, err
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [(line["event"], line["data"]["status"]) for line in lines] == [
        ("status", "queued"),
        ("status", "sent"),
    ]
    assert {line["data"]["request_id"] for line in lines} == {request_id}
    assert all(line["id"] for line in lines)


async def test_pusher_webhooks_alone_delivers_serves_metrics_and_stops(
    api_env: dict[str, str], tmp_path: Path
) -> None:
    """`pusher webhooks` delivers signed events from its own consumer group, counts them on
    its metrics port and stops on SIGTERM; without WEBHOOKS_PATH it refuses to start."""
    from aiokafka import AIOKafkaProducer

    from preservarium_pusher_api.core.contract import CommandStatus, StatusEvent, utc_now
    from tests.integration.api.test_webhooks import SECRET, Receiver, documented_verify

    refused = subprocess.run(
        [PUSHER, "webhooks"], env=api_env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "WEBHOOKS_PATH" in refused.stderr
    receiver = Receiver(free_port())
    await receiver.up()
    hooks = tmp_path / "webhooks.yaml"
    hooks.write_text(
        "subscriptions:\n"
        f"  - {{name: lab, url: 'http://127.0.0.1:{receiver.port}/hook', secret: {SECRET}}}\n"
    )
    metrics_port = free_port()
    env = {
        **api_env,
        "WEBHOOKS_PATH": str(hooks),
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "WEBHOOK_GROUP_ID": f"{api_env['KAFKA_COMMAND_TOPIC']}-webhooks",
        "KAFKA_PRESENCE_TOPIC": f"{api_env['KAFKA_COMMAND_TOPIC']}-presence",
        "KAFKA_CONSUMER_REBALANCE_TIMEOUT_MS": "300",
    }
    process = subprocess.Popen(
        [PUSHER, "webhooks", "--metrics-port", str(metrics_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert wait_for_port("127.0.0.1", metrics_port, timeout=15), "no metrics port"
        producer = AIOKafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
        await producer.start()
        try:
            event = StatusEvent(
                request_id="6b0c1a64-9a51-4f0e-8d7e-0c7b4a3e2f10",
                device_id="pico-w-lab-001",
                status=CommandStatus.SUCCEEDED,
                occurred_at=utc_now(),
                source="connector-mqtt-1",
            )
            async with asyncio.timeout(30):  # a new group starts at the end: repeat
                while not receiver.deliveries:
                    await producer.send_and_wait(
                        env["KAFKA_RESULT_TOPIC"], event.model_dump_json().encode(), key=b"k"
                    )
                    await asyncio.sleep(0.5)
        finally:
            await producer.stop()
        headers, body = receiver.deliveries[0]
        assert documented_verify()(SECRET, headers["Pusher-Signature"], body)
        assert json.loads(body)["data"]["status"] == "succeeded"
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'pusher_webhook_deliveries_total{outcome="delivered",subscription="lab"}' in metrics
    finally:
        output = stop(process, signal.SIGTERM)
        await receiver.down()
    assert process.returncode == 0, output
    assert SECRET not in output
