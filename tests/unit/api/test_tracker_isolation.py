"""One record the store refuses is dropped alone; a store that refuses everything is down."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.contract import CommandStatus, StatusEvent, utc_now
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.services.tracker import StatusTracker

pytestmark = pytest.mark.unit


class PickyStore:
    """Refuses any batch holding a request id in ``refuse``; ``down`` refuses all."""

    def __init__(self, refuse: set[str], down: bool = False) -> None:
        self.refuse, self.down = refuse, down
        self.applied: list[str] = []
        self.devices = SimpleNamespace(apply_presence=self._presence)

    async def apply_events(self, events: Sequence[StatusEvent]) -> list[Any]:
        if self.down or any(e.request_id in self.refuse for e in events):
            raise RuntimeError("refused")
        self.applied += [e.request_id for e in events]
        return []

    async def _presence(self, items: Sequence[Any]) -> None:
        if self.down:
            raise RuntimeError("refused")


def event(request_id: str) -> StatusEvent:
    return StatusEvent(
        request_id=request_id,
        device_id="pico-1",
        status=CommandStatus.SENT,
        occurred_at=utc_now(),
        source="connector-mqtt-unit",
    )


def tracker(store: PickyStore) -> tuple[StatusTracker, PusherMetrics]:
    metrics = PusherMetrics()
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    return StatusTracker(settings, store, metrics), metrics  # type: ignore[arg-type]


async def test_the_refused_record_is_dropped_and_the_rest_applied() -> None:
    store = PickyStore({"poison"})
    track, metrics = tracker(store)
    await track._apply_one_by_one([event("a"), event("poison"), event("b")], [])
    assert store.applied == ["a", "b"]
    dropped = metrics.registry.get_sample_value(
        "pusher_tracker_dropped_records_total", {"reason": "refused"}
    )
    assert dropped == 1


async def test_a_store_that_takes_nothing_is_down_and_the_batch_is_read_again() -> None:
    store = PickyStore(set(), down=True)
    track, _ = tracker(store)
    with pytest.raises(RuntimeError):
        await track._apply_one_by_one([event("a"), event("b")], [])
