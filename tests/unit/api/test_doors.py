"""Doors: metrics behind the key when asked, long-polls capped per key, probes cheap."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.services.kafka_service import KafkaService
from tests.unit.api.conftest import ApiFactory, InProcessApi

pytestmark = pytest.mark.unit

KEYS = "key-one-0123456789abcdef,key-two-0123456789abcdef"


def store(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "status_store_enabled": True,
        "status_store_url": f"sqlite+aiosqlite:///{tmp_path}/status.db",
        **overrides,
    }


async def test_metrics_need_the_key_only_when_metrics_require_auth(make_api: ApiFactory) -> None:
    async with make_api(enable_auth=True, api_keys=KEYS) as api:
        assert (await api.client.get("/api/v1/metrics")).status_code == 200
    async with make_api(enable_auth=True, api_keys=KEYS, metrics_require_auth=True) as api:
        refused = await api.client.get("/api/v1/metrics")
        assert refused.status_code == 401 and refused.json()["type"] == "AuthenticationError"
        allowed = await api.client.get(
            "/api/v1/metrics", headers={"X-API-Key": "key-one-0123456789abcdef"}
        )
        assert allowed.status_code == 200 and b"pusher_" in allowed.content


async def queued_command(api: InProcessApi, key: str) -> str:
    body = {"device_id": "pico-1", "command_type": "led", "payload": {}, "protocol": "mqtt"}
    response = await api.client.post("/api/v1/commands", json=body, headers={"X-API-Key": key})
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


async def test_long_polls_beyond_the_cap_of_a_key_are_429_and_others_keep_theirs(
    make_api: ApiFactory, tmp_path: Path
) -> None:
    one, two = KEYS.split(",")
    async with make_api(
        **store(tmp_path, enable_auth=True, api_keys=KEYS, max_long_polls_per_key=2)
    ) as api:
        request_id = await queued_command(api, one)
        url = f"/api/v1/commands/{request_id}/status"

        def poll(key: str, wait: float = 0.8) -> Any:
            return api.client.get(url, params={"wait": wait}, headers={"X-API-Key": key})

        held = [asyncio.create_task(poll(one)) for _ in range(2)]
        await asyncio.sleep(0.2)
        over = await poll(one)
        assert over.status_code == 429, over.text
        assert over.json()["type"] == "TooManyLongPollsError" and over.headers["retry-after"]
        plain = await api.client.get(url, headers={"X-API-Key": one})  # no wait: not counted
        assert plain.status_code == 200
        assert (await poll(two, wait=0.2)).status_code == 200  # another key's own budget
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await poll(one, wait=0.2)).status_code == 200  # freed when they ended


async def test_readiness_probes_arriving_together_share_one_kafka_request(
    make_api: ApiFactory,
) -> None:
    calls = 0

    class CountingKafka(KafkaService):
        async def check_ready(self) -> bool:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            return True

    kafka = CountingKafka(Settings(_env_file=None), PusherMetrics())  # type: ignore[call-arg]
    answers = await asyncio.gather(*(kafka.probe_ready() for _ in range(50)))
    assert all(answers) and calls == 1
    assert await kafka.probe_ready() and calls == 1  # reused within the interval
