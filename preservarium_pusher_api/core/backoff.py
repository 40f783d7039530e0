"""Capped exponential backoff with jitter, shared by every reconnect and retry loop."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, maximum: float = 5.0, base: float = 0.2) -> float:
    """Seconds to wait before attempt ``attempt`` (1, 2, …): half fixed, half random."""
    delay = min(maximum, base * 2 ** min(attempt, 16))
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not security
