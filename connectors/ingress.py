"""What a connector takes in from devices, checked before anything else reads it.

Messages devices send (MQTT answers and statuses, retained or not) are untrusted: a message
may be huge, nested deeply enough to exhaust the parser's recursion, not UTF-8, or sent on a
topic whose device id no API request could have used. Each check here raises
:class:`MessageRefused` with a short ``reason`` (a metric label); :class:`Refusals` counts
the refusals and logs each reason once per interval with the topic, never the payload.
"""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import Counter

from preservarium_pusher_api.core.contract import check_identifier
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

REASONS: Final = (
    "too_large",
    "too_deep",
    "not_utf8",
    "bad_device_id",
    "bad_topic",
    "invalid",
    "error",
)

_OPENERS = frozenset(b"[{")
_CLOSERS = frozenset(b"]}")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


class MessageRefused(Exception):
    """A device message that is dropped unread; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_size(payload: bytes, limit: int) -> bytes:
    """``payload`` if it is at most ``limit`` bytes."""
    if len(payload) > limit:
        raise MessageRefused("too_large", f"message of {len(payload)} bytes; limit {limit}")
    return payload


def check_depth(payload: bytes, limit: int) -> bytes:
    """``payload`` if its JSON arrays and objects nest at most ``limit`` deep.

    A linear scan that skips string contents: it never recurses, so a message of 50,000
    opening brackets is refused in microseconds instead of exhausting a parser's stack.
    """
    depth = 0
    in_string = False
    escaped = False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPENERS:
            depth += 1
            if depth > limit:
                raise MessageRefused("too_deep", f"nested deeper than {limit} levels")
        elif byte in _CLOSERS:
            depth -= 1
    return payload


def check_utf8(payload: bytes) -> str:
    """The text of ``payload``, which must be UTF-8."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageRefused("not_utf8", "message is not UTF-8") from exc


def check_device_id(device_id: str) -> str:
    """A device id read from a topic, under the API's identifier rules."""
    try:
        return check_identifier(device_id)
    except ValueError as exc:
        raise MessageRefused("bad_device_id", f"device id from the topic {exc}") from exc


class Refusals:
    """Counts refused device messages and logs each reason at most once per interval."""

    def __init__(self, counter: Counter, protocol: str, log_every: float = 60.0) -> None:
        self._counter = counter
        self._protocol = protocol
        self._log_every = log_every
        self._logged: dict[str, float] = {}
        for reason in REASONS:
            counter.labels(protocol, reason)

    def refused(self, reason: str, topic: str, error: BaseException) -> None:
        """Count one refusal; log it (topic, reason, error type and text) unless logged lately."""
        self._counter.labels(self._protocol, reason).inc()
        now = time.monotonic()
        if now - self._logged.get(reason, -self._log_every) < self._log_every:
            return
        self._logged[reason] = now
        log.warning(
            "device message refused",
            reason=reason,
            topic=topic[:200],
            error=type(error).__name__,
            why=str(error)[:200] if isinstance(error, MessageRefused) else None,
        )
