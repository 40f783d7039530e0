"""What a webhook subscription holds (its state, its backlog of fetched batches) and how
one delivery is sent.

Every subscription has its own backlog, delivered by its own task, so a failing receiver
falls behind alone. A fetched ``Batch`` is committed once every subscription it was
queued to has finished it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiokafka import TopicPartition

from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.services.events import LiveEvent
from preservarium_pusher_api.services.webhook_config import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    Subscription,
    sign,
)


@dataclass
class SubscriptionState:
    """How a subscription is doing (shown by ``GET /api/v1/webhooks``)."""

    subscription: Subscription
    failing_since: float | None = None
    paused: bool = False
    delivered: int = 0
    failed_attempts: int = 0
    dropped: int = 0
    last_error: str | None = None

    def describe(self) -> dict[str, Any]:
        wanted = self.subscription.wanted
        state = "paused" if self.paused else "failing" if self.failing_since else "active"
        return {
            "name": self.subscription.name,
            # without query or fragment: a token there is a secret too
            "url": urlsplit(self.subscription.url)._replace(query="", fragment="").geturl(),
            "state": state,
            "events": sorted(wanted.kinds) or ["presence", "status"],
            "device_ids": sorted(wanted.device_ids),
            "statuses": sorted(wanted.statuses),
            "failing_for_seconds": (
                round(time.monotonic() - self.failing_since, 1) if self.failing_since else None
            ),
            "delivered": self.delivered,
            "failed_attempts": self.failed_attempts,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }


def delivery_body(subscription: str, event: LiveEvent, event_id: str) -> bytes:
    """What a receiver gets: the event as on the stream, with its id and subscription."""
    document: dict[str, Any] = {"id": event_id, "event": event.kind}
    document["subscription"] = subscription
    document["data"] = event.data
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(eq=False)
class Batch:
    """One fetch: its events, the offsets that commit it, the subscriptions yet to finish it."""

    items: list[tuple[LiveEvent, str]]
    offsets: dict[TopicPartition, int]
    generation: int
    remaining: int = 0


class Pipeline:
    """One subscription's backlog of fetched batches, delivered by its own task: a failing
    receiver falls behind alone while the others go on."""

    def __init__(self, state: SubscriptionState) -> None:
        self.state = state
        self.queue: collections.deque[tuple[Batch, list[tuple[LiveEvent, str]]]] = (
            collections.deque()
        )
        self.backlog = 0  # matching events queued or being delivered
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def put(self, batch: Batch) -> None:
        wanted = self.state.subscription.wanted
        matching = [(event, event_id) for event, event_id in batch.items if wanted.matches(event)]
        if not matching:
            return
        batch.remaining += 1
        self.queue.append((batch, matching))
        self.backlog += len(matching)
        self.ready.set()


async def post_delivery(
    http: httpx.AsyncClient,
    subscription: Subscription,
    body: bytes,
    event_id: str,
    attempt: int,
    metrics: PusherMetrics,
) -> str | None:
    """POST one signed delivery: None when the receiver answered 2xx, else what went wrong
    (no secrets, no body)."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(subscription.secret, int(time.time()), body),
        EVENT_ID_HEADER: event_id,
        "Pusher-Delivery-Attempt": str(attempt),
    }
    started = time.perf_counter()
    try:
        response = await http.post(subscription.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    finally:
        metrics.webhook_duration.labels(subscription.name).observe(time.perf_counter() - started)
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"
