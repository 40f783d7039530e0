"""End-to-end scenarios every protocol must pass: order, never twice, cancel, expiry.

Each protocol's ``test_scenarios.py`` builds a :class:`Lab` (the API with its tracker, a
connector of that protocol, one device behind it) and subclasses :class:`Scenarios`. The
devices here remember nothing: they run every command they are given and log each run, so a
command sent twice shows up twice in :meth:`Lab.executions`.
"""

from __future__ import annotations

import abc
import asyncio
import time
from typing import Any

from tests.api_helpers import wait_status, wait_terminal
from tests.conftest import LiveApi


class Lab(abc.ABC):
    """One device of one protocol behind the whole stack."""

    protocol: str
    device_id: str

    def __init__(self, api: LiveApi) -> None:
        self.api = api

    @abc.abstractmethod
    def body(self) -> dict[str, Any]:
        """A command this device runs and answers with success."""

    @abc.abstractmethod
    def executions(self) -> list[str]:
        """Request ids of every run on the device, in order, repeats included."""

    @abc.abstractmethod
    def set_latency(self, seconds: float) -> None:
        """How long the device takes for each command from now on."""

    def accepted(self, body: dict[str, Any], request_id: str) -> None:  # noqa: B027
        """Hook: the API accepted ``body`` as ``request_id``."""

    async def submit(self, **overrides: Any) -> str:
        body = {**self.body(), **overrides}
        response = await self.api.client.post("/api/v1/commands", json=body)
        assert response.status_code == 202, response.text
        request_id: str = response.json()["request_id"]
        self.accepted(body, request_id)
        return request_id

    async def wait_running(self, request_id: str, within: float = 15) -> None:
        """Until the device has started ``request_id``."""
        deadline = time.monotonic() + within
        while request_id not in self.executions():
            assert time.monotonic() < deadline, f"{request_id} never reached the device"
            await asyncio.sleep(0.02)


class Scenarios:
    """The promises, written once; ``lab`` is each protocol's fixture."""

    async def test_commands_run_once_each_in_the_order_accepted(self, lab: Lab) -> None:
        accepted = [await lab.submit() for _ in range(15)]
        for request_id in accepted:
            await wait_status(lab.api, request_id, "succeeded")
        assert lab.executions() == accepted

    async def test_slower_than_its_timeout_times_out_and_runs_once(self, lab: Lab) -> None:
        lab.set_latency(2.0)
        slow = await lab.submit(timeout_seconds=1)
        body = await wait_status(lab.api, slow, "timed_out")
        assert "succeeded" not in [entry["status"] for entry in body["history"]]
        lab.set_latency(0)
        # the device finishes on its own; the next command goes out and nothing is repeated
        after = await lab.submit()
        await wait_status(lab.api, after, "succeeded", within=30)
        await asyncio.sleep(1.5)  # time for a re-send, were there one
        assert lab.executions().count(slow) == 1
        assert lab.executions().count(after) == 1
        final = (await lab.api.client.get(f"/api/v1/commands/{slow}/status")).json()
        assert final["status"] == "timed_out"

    async def test_cancelled_while_waiting_its_turn_never_runs(self, lab: Lab) -> None:
        lab.set_latency(1.5)
        first = await lab.submit()
        await lab.wait_running(first)
        second = await lab.submit()
        cancel = await lab.api.client.delete(f"/api/v1/commands/{second}")
        assert cancel.status_code == 202, cancel.text
        await wait_status(lab.api, second, "cancelled")
        await wait_status(lab.api, first, "succeeded")
        lab.set_latency(0)
        third = await lab.submit()
        await wait_status(lab.api, third, "succeeded")
        assert lab.executions().count(first) == 1
        assert second not in lab.executions()
        final = (await lab.api.client.get(f"/api/v1/commands/{second}/status")).json()
        assert final["status"] == "cancelled"

    async def test_expired_while_waiting_its_turn_never_runs(self, lab: Lab) -> None:
        lab.set_latency(2.5)
        first = await lab.submit()
        await lab.wait_running(first)
        second = await lab.submit(ttl_seconds=1)
        body = await wait_terminal(lab.api, second, within=20)
        assert body["status"] == "expired", body
        assert "sent" not in [entry["status"] for entry in body["history"]]
        await wait_status(lab.api, first, "succeeded")
        assert second not in lab.executions()
