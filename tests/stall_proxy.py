"""A TCP proxy that can hold back what a server answers, then let it through.

Put in front of a Kafka broker (advertised at the proxy's port), ``stall()`` keeps every
broker response in the proxy — the broker has done the work, the client has not heard —
and ``release()`` delivers them in order: a produce acknowledgement that arrives late.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self


class StallingProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``; answers can be held back."""

    def __init__(self, upstream_port: int, port: int) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def stall(self) -> None:
        """Hold every answer from now on."""
        self._open.clear()

    def release(self) -> None:
        """Deliver what was held, and everything after it."""
        self._open.set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, gated=False)),
            asyncio.create_task(self._pump(up_reader, writer, gated=True)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for stream in (writer, up_writer):
                with contextlib.suppress(Exception):
                    stream.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, gated: bool
    ) -> None:
        while chunk := await source.read(65536):
            if gated:
                await self._open.wait()
            sink.write(chunk)
            await sink.drain()
