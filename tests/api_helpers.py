"""Waiting on the live API and on a connector process: shared by integration and e2e tests."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterable
from typing import Any

import httpx

from tests.conftest import LiveApi

TERMINAL = frozenset({"succeeded", "failed", "timed_out", "expired", "cancelled"})


async def wait_status(api: LiveApi, request_id: str, status: str, within: float = 20) -> Any:
    """Long-poll until the command reaches ``status``."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        params: dict[str, Any] = {"wait": 5}
        if last:
            params["last_status"] = last
        response = await api.client.get(f"/api/v1/commands/{request_id}/status", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] == status:
            return body
        last = body["status"]
    raise AssertionError(f"{request_id} never reached {status}; last {last}")


async def wait_terminal(
    api: LiveApi, request_id: str, within: float = 30, statuses: Iterable[str] = TERMINAL
) -> Any:
    """Poll until the command reaches one of ``statuses`` (any terminal status by default)."""
    wanted = set(statuses)
    deadline = time.monotonic() + within
    body: Any = {}
    while time.monotonic() < deadline:
        response = await api.client.get(f"/api/v1/commands/{request_id}/status")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in wanted:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{request_id} stuck at {body.get('status')}")


async def poll_device(api: LiveApi, device_id: str, online: bool, within: float = 10) -> Any:
    """Poll the devices API until ``device_id`` shows ``online``."""
    deadline = time.monotonic() + within
    body: Any = None
    while time.monotonic() < deadline:
        response = await api.client.get(f"/api/v1/devices/{device_id}")
        if response.status_code == 200:
            body = response.json()
            if body["online"] is online:
                return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{device_id} never became online={online}: {body}")


async def wait_healthy(port: int, process: subprocess.Popen[bytes], within: float = 30) -> dict:
    """Poll a connector process's ``/health`` until it answers 200."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, "connector exited"
            try:
                response = await client.get(f"http://127.0.0.1:{port}/health")
                if response.status_code == 200:
                    return dict(response.json())
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("connector never became healthy")
