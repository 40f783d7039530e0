"""Crash-only supervision of a process's long-lived tasks.

A helper task (a transport reader, a committer, a sweeper) that ends while its process is
meant to run leaves a half-alive process: healthy to look at, doing nothing. Supervised,
its end is logged with its exception and raised as :class:`TaskDied`, so the process
exits non-zero and its supervisor (compose, systemd, Kubernetes) starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable
from typing import TypeVar

from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


class TaskDied(RuntimeError):
    """A supervised task ended while the process was running."""

    def __init__(self, name: str, error: BaseException | None) -> None:
        reason = f"{type(error).__name__}: {error}" if error is not None else "it returned"
        super().__init__(f"task {name!r} ended unexpectedly ({reason})")
        self.name = name


def check_alive(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Raise :class:`TaskDied` (after logging it) if any of ``tasks`` has ended."""
    for task in tasks:
        if task.done():
            error = None if task.cancelled() else task.exception()
            log.error(
                "task died; stopping the process",
                task=task.get_name(),
                error=type(error).__name__ if error is not None else None,
                exc_info=error,
            )
            raise TaskDied(task.get_name(), error) from error


async def run_supervised(main: Awaitable[T], helpers: Iterable[asyncio.Task[object]]) -> T:
    """Await ``main`` while ``helpers`` run; the first helper to end stops ``main`` (which
    is cancelled and awaited) and is raised as :class:`TaskDied`."""
    main_task = asyncio.ensure_future(main)
    watched = set(helpers)
    try:
        while True:
            done, _ = await asyncio.wait({main_task, *watched}, return_when=asyncio.FIRST_COMPLETED)
            if main_task in done:
                return main_task.result()
            check_alive(done)
    finally:
        if not main_task.done():
            main_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await main_task
