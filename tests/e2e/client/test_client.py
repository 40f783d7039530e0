"""PusherAPIClient / PusherClient against the real running stack (no mock transport)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pusher_dev.embedded_kafka import EmbeddedKafka, free_port, wait_for_port

from preservarium_pusher_api.client import (
    CommandNotFound,
    CommandRejected,
    PusherAPIClient,
    PusherClient,
    ResultTimeout,
    Unauthorized,
)
from tests.conftest import LedStack, SettingsFactory, serve
from tests.kafka_helpers import count_records

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[3]
LED = {"device_id": "pico-c1", "command_type": "control_led", "protocol": "mqtt"}


async def test_push_command_compat_returns_true_only_when_accepted(led_stack: LedStack) -> None:
    async with PusherAPIClient(led_stack.api.base_url) as client:
        assert await client.push_command(**LED, payload={"pin": 25, "state": True}) is True
        assert await client.push_command(**{**LED, "protocol": "carrier-pigeon"}) is False
        assert await client.push_command(**{**LED, "device_id": "bad/id"}) is False


async def test_send_then_wait_for_result_reaches_succeeded(led_stack: LedStack) -> None:
    async with PusherAPIClient(led_stack.api.base_url) as client:
        accepted = await client.send_command(**LED, payload={"pin": 25, "state": True})
        assert accepted.success and accepted.request_id
        final = await client.wait_for_result(accepted.request_id, timeout=20)
        assert final.status == "succeeded" and final.result == "LED on pin 25 ON"
        assert [h.status for h in final.history][:2] == ["queued", "sent"]
        listed = await client.list_commands(device_id="pico-c1")
        assert accepted.request_id in [item.request_id for item in listed.items]
        devices = await client.devices()
        assert "pico-c1" in [device.device_id for device in devices.items]
        assert (await client.device("pico-c1")).online is True


async def test_batch_and_cancel(led_stack: LedStack) -> None:
    async with PusherAPIClient(led_stack.api.base_url) as client:
        batch = await client.push_commands_batch(
            [
                {**LED, "payload": {"pin": 25, "state": False}},
                {**LED, "device_id": "pico-nobody", "payload": {"pin": 2, "state": True}},
            ]
        )
        assert (batch.total_commands, batch.successful, batch.failed) == (2, 2, 0)
        # nobody answers for pico-nobody: its command stays queued behind on_result
        queued = await client.send_command(
            "pico-nobody", "control_led", "mqtt", {"pin": 3}, metadata={"dispatch": "on_result"}
        )
        cancel = await client.cancel(queued.request_id)
        assert cancel.request_id == queued.request_id


async def test_typed_errors_carry_the_servers_details(led_stack: LedStack) -> None:
    async with PusherAPIClient(led_stack.api.base_url) as client:
        with pytest.raises(CommandRejected) as rejected:
            await client.send_command("bad/id", "control_led", "mqtt")
        assert rejected.value.status_code == 422
        assert rejected.value.error_type == "ValidationError"
        assert any("device_id" in str(d.get("loc")) for d in rejected.value.details)
        with pytest.raises(CommandNotFound):
            await client.get_status("00000000-0000-4000-8000-000000000000")
        silent = await client.send_command("pico-silent", "control_led", "mqtt", timeout_seconds=30)
        with pytest.raises(ResultTimeout) as waited:
            await client.wait_for_result(silent.request_id, timeout=0.5)
        assert waited.value.status.status in ("queued", "sent", "delivered")


async def test_unauthorized_is_typed(make_settings: SettingsFactory) -> None:
    settings = make_settings(enable_auth=True, api_keys="right-key")
    async with serve(settings) as api:
        async with PusherAPIClient(api.base_url, api_key="wrong-key") as client:
            with pytest.raises(Unauthorized) as error:
                await client.send_command(**LED)
            assert error.value.status_code == 401
        async with PusherAPIClient(api.base_url, api_key="right-key") as client:
            assert (await client.send_command(**LED)).success


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The real HTTP transport, remembering status codes and Idempotency-Keys sent."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, str | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.seen.append((response.status_code, request.headers.get("Idempotency-Key")))
        return response


async def test_retry_on_503_sends_one_command_with_one_idempotency_key(
    make_settings: SettingsFactory,
) -> None:
    """Kafka is down at first (503); the client retries with the same key; one record."""
    port = free_port()
    settings = make_settings(
        kafka_bootstrap_servers=f"127.0.0.1:{port}",
        kafka_enable_idempotence=False,
        kafka_producer_timeout=2.0,
    )
    broker = EmbeddedKafka(port=port)
    try:
        async with serve(settings, wait_for_kafka=False) as api:
            transport = RecordingTransport()
            async with PusherAPIClient(
                api.base_url, retries=30, backoff=0.2, transport=transport
            ) as client:
                sending = asyncio.create_task(client.send_command(**LED, payload={"pin": 1}))
                while not transport.seen:
                    await asyncio.sleep(0.05)
                assert transport.seen[0][0] == 503
                await asyncio.to_thread(broker.start)
                accepted = await asyncio.wait_for(sending, 60)
            assert accepted.success
            keys = {key for _, key in transport.seen}
            assert len(keys) == 1 and None not in keys
            assert [code for code, _ in transport.seen][-1] == 202
            assert await count_records(broker.bootstrap_servers, settings.kafka_command_topic) == 1
    finally:
        broker.stop()


@pytest.fixture
def api_process(api_env_for_client: dict[str, str]) -> Iterator[str]:
    """`pusher api` in its own process (the caller's event loop stays free)."""
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "pusher"), "api"],
        env=api_env_for_client,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    port = int(api_env_for_client["API_PORT"])
    try:
        assert wait_for_port("127.0.0.1", port, timeout=30), "pusher api did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def api_env_for_client(make_settings: SettingsFactory, tmp_path: Path) -> dict[str, str]:
    settings = make_settings()
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": str(settings.kafka_enable_idempotence).lower(),
        "KAFKA_COMMAND_TOPIC": settings.kafka_command_topic,
        "KAFKA_RESULT_TOPIC": settings.kafka_result_topic,
        "API_PORT": str(free_port()),
        "STATUS_STORE_URL": f"sqlite:///{tmp_path}/status.db",
        "TRACKER_GROUP_ID": f"{settings.kafka_command_topic}-tracker",
    }


async def test_sync_client_works_inside_a_running_event_loop(api_process: str) -> None:
    """Like a Jupyter cell: a loop is running in this thread; the sync client does not care."""
    asyncio.get_running_loop()
    with PusherClient(api_process) as client:
        accepted = client.send_command(**LED, payload={"pin": 25, "state": True})
        status = client.get_status(accepted.request_id)
        assert status.status == "queued" and status.device_id == "pico-c1"
        assert client.push_command(**LED) is True


def test_importing_the_client_needs_only_httpx_and_pydantic() -> None:
    """With the server's libraries made unimportable, the client still imports and builds."""
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
BLOCKED = {"fastapi", "starlette", "aiokafka", "sqlalchemy", "uvicorn", "aiomqtt", "aiocoap",
           "structlog", "prometheus_client", "slowapi", "pydantic_settings", "yaml"}
sys.meta_path.insert(0, Block())
from preservarium_pusher_api.client import PusherAPIClient, PusherClient
PusherClient("http://127.0.0.1:1").close()
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
