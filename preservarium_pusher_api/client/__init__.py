"""Python client of the pusher API: ``PusherAPIClient`` (async) and ``PusherClient`` (sync).

Needs only ``httpx`` and ``pydantic`` (``pip install 'preservarium-pusher[client]'``); it
never imports FastAPI, aiokafka or the server code, so it fits in a lab notebook::

    async with PusherAPIClient("http://pusher:8000", api_key="…") as client:
        accepted = await client.send_command(
            device_id="pico-w-lab-001", command_type="control_led", protocol="mqtt",
            payload={"pin": 25, "state": True},
        )
        final = await client.wait_for_result(accepted.request_id, timeout=30)

    client = PusherClient("http://pusher:8000")          # scripts, Jupyter: no event loop
    client.push_command(device_id=…, command_type=…, protocol="http", payload={…})  # → bool

503 (Kafka unavailable), 429 (rate limited) and connection failures are retried with
backoff, honouring ``Retry-After``; a POST carries one ``Idempotency-Key`` on every retry,
so a retry never creates a second command. Errors are typed: ``CommandRejected`` (4xx, with
the server's ``details``), ``Unauthorized``, ``RateLimited``, ``ServiceUnavailable``,
``CommandNotFound``, ``ResultTimeout``.
"""

from preservarium_pusher_api.client._async import PusherAPIClient
from preservarium_pusher_api.client._errors import (
    CommandNotFound,
    CommandRejected,
    PusherClientError,
    RateLimited,
    ResultTimeout,
    ServiceUnavailable,
    Unauthorized,
)
from preservarium_pusher_api.client._events import Event, EventsGone
from preservarium_pusher_api.client._plan import DEFAULT_URL, MAX_LONG_POLL_SECONDS
from preservarium_pusher_api.client._sync import PusherClient

__all__ = [
    "DEFAULT_URL",
    "MAX_LONG_POLL_SECONDS",
    "CommandNotFound",
    "CommandRejected",
    "Event",
    "EventsGone",
    "PusherAPIClient",
    "PusherClient",
    "PusherClientError",
    "RateLimited",
    "ResultTimeout",
    "ServiceUnavailable",
    "Unauthorized",
]
