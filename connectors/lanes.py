"""Device lanes: one device's commands, in order, one at a time; lanes run in parallel."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from connectors.dispatcher import Dispatcher
from connectors.work import Work
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)


class DeviceLane:
    """One device's commands, processed in order by one task that ends when idle."""

    def __init__(
        self, device_id: str, dispatcher: Dispatcher, on_idle: Callable[[str], None]
    ) -> None:
        self.device_id = device_id
        self._dispatcher = dispatcher
        self._on_idle = on_idle
        self.queue: deque[Work] = deque()
        self._task: asyncio.Task[None] | None = None

    def add(self, work: Work) -> None:
        """Queue a command behind the device's earlier ones."""
        self.queue.append(work)
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"lane-{self.device_id}")

    def wake(self) -> None:
        """Re-check the head command now (presence changed, cancel arrived)."""
        if self.queue:
            self.queue[0].wake.set()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The running drain task, if any."""
        return self._task

    async def _drain(self) -> None:
        try:
            while self.queue:
                work = self.queue[0]
                try:
                    await self._dispatcher.process(work)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug must not stall the device forever
                    log.exception(
                        "command processing failed",
                        request_id=work.command.request_id,
                        device_id=self.device_id,
                        error=type(exc).__name__,
                    )
                    await self._dispatcher.fail(work, f"connector error: {type(exc).__name__}")
                self.queue.popleft()
        finally:
            self._task = None
            if not self.queue:
                self._on_idle(self.device_id)
