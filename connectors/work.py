"""What the runtime knows of one command record while it is in this connector."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from preservarium_pusher_api.core.contract import CommandMessage, CommandStatus


class Stage(Enum):
    """Where a command is in this connector."""

    WAITING = "waiting"  # queued behind the device's earlier commands, or held
    SENDING = "sending"  # handed to the transport
    SENT = "sent"  # the transport finished with it
    DONE = "done"  # nothing more to do here


@dataclass(eq=False)
class Work:
    """One command record taken from Kafka."""

    command: CommandMessage
    partition: Any
    offset: int  # in the commands partition; -1 for a command read back from the lot
    taken_at: float = field(default_factory=time.perf_counter)
    stage: Stage = Stage.WAITING
    cancelled: bool = False
    abandoned: bool = False  # its partition went to another instance before it was sent
    parked: bool = False  # in the parking lot: its commands offset is already finished
    last_status: CommandStatus = CommandStatus.QUEUED
    traceparent: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class PendingAnswer:
    """A command handed to a device whose answer is awaited."""

    device_id: str
    sent_at: float
    deadline: float
    timeout: float
    waiter: asyncio.Future[None] | None = None
