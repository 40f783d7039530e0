"""The benchmark's open-loop load generator reports what it really sent and what came back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from pusher_dev.embedded_kafka import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from loadgen import offer

pytestmark = pytest.mark.integration


class Receiver:
    """An ASGI app that counts POSTs per device and answers 202, or never (``hang``)."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.devices: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.devices[json.loads(body)["device_id"]] += 1
        if self.hang:
            await asyncio.sleep(3600)
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


@contextlib.asynccontextmanager
async def serving(app: Receiver) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}/api/v1/commands"
    finally:
        server.should_exit = True
        server.force_exit = True
        await task


async def test_every_due_request_is_sent_and_answered_once() -> None:
    app = Receiver()
    async with serving(app) as url:
        result = await offer(
            url, rate=200, seconds=1, devices=["a", "b", "c", "d"], max_inflight=64
        )
    assert result["due"] == 200 and result["sent"] == 200 and result["skipped"] == 0
    assert result["answers"] == {"202": 200}
    assert app.devices == {"a": 50, "b": 50, "c": 50, "d": 50}  # what the server received


async def test_a_server_that_does_not_answer_shows_as_not_sent_not_as_offered() -> None:
    """Open loop: requests fall due whatever the server does; beyond the open-request cap
    they are counted as not sent, and the achieved rate says so."""
    app = Receiver(hang=True)
    async with serving(app) as url:
        result = await offer(
            url, rate=100, seconds=1, devices=["a"], max_inflight=5, request_timeout=1
        )
    assert result["due"] == 100
    assert result["sent"] == 5 and result["skipped"] == 95
    assert "202" not in result["answers"] and sum(result["answers"].values()) == 5
    assert sum(app.devices.values()) == 5
    assert result["achieved"] < 10
