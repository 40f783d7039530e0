"""Crash-only supervision: a helper task that ends stops its process, loudly."""

from __future__ import annotations

import asyncio
import signal
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from preservarium_pusher_api.core.supervision import TaskDied, check_alive, run_supervised
from preservarium_pusher_api.main import watch_background

pytestmark = pytest.mark.unit


async def test_a_helper_that_raises_stops_main_and_is_raised_with_its_exception() -> None:
    main_cancelled = asyncio.Event()

    async def main() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            main_cancelled.set()
            raise

    async def reader() -> None:
        await asyncio.sleep(0.01)
        raise RecursionError("maximum recursion depth exceeded")

    helper = asyncio.create_task(reader(), name="transport")
    with capture_logs() as logs, pytest.raises(TaskDied, match="'transport'") as died:
        await run_supervised(main(), [helper])
    assert main_cancelled.is_set()
    assert isinstance(died.value.__cause__, RecursionError)
    [entry] = [e for e in logs if e["event"] == "task died; stopping the process"]
    assert entry["task"] == "transport" and entry["error"] == "RecursionError"
    assert entry["log_level"] == "error"


async def test_a_helper_that_returns_is_a_death_too_and_main_may_finish_first() -> None:
    async def quits() -> None:
        return None

    helper = asyncio.create_task(quits(), name="committer")
    with pytest.raises(TaskDied, match="it returned"):
        await run_supervised(asyncio.Event().wait(), [helper])

    forever = asyncio.create_task(asyncio.Event().wait(), name="sweeper")

    async def main() -> str:
        return "stopped"

    assert await run_supervised(main(), [forever]) == "stopped"
    check_alive([forever])  # still running: nothing raised
    forever.cancel()


async def test_the_api_stops_itself_when_a_background_task_dies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raised: list[int] = []
    monkeypatch.setattr(signal, "raise_signal", raised.append)
    app = SimpleNamespace(state=SimpleNamespace())

    async def writer() -> None:
        raise OSError("disk gone")

    task = asyncio.create_task(writer(), name="queued-writer")
    await watch_background(app, [task])  # type: ignore[arg-type]
    assert raised == [signal.SIGTERM]
    assert "queued-writer" in str(app.state.died)
