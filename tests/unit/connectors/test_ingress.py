"""Device messages are checked before anything parses them; refusals are counted, not fatal."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter
from structlog.testing import capture_logs

from connectors.ingress import (
    MessageRefused,
    Refusals,
    check_depth,
    check_device_id,
    check_size,
    check_utf8,
)

pytestmark = pytest.mark.unit


def test_deep_nesting_is_refused_without_recursion() -> None:
    poison = b"[" * 50_000 + b"]" * 50_000
    with pytest.raises(MessageRefused) as refused:
        check_depth(poison, 64)
    assert refused.value.reason == "too_deep"


def test_brackets_inside_strings_do_not_count() -> None:
    text = b'{"error": "[[[[[[[[[[ \\" [[[[[[", "result": [[1]]}'
    assert check_depth(text, 3) == text
    with pytest.raises(MessageRefused):
        check_depth(b'{"a": [[[1]]]}', 3)


def test_size_utf8_and_device_id_rules() -> None:
    assert check_size(b"x" * 10, 10) == b"x" * 10
    with pytest.raises(MessageRefused, match="11 bytes") as big:
        check_size(b"x" * 11, 10)
    assert big.value.reason == "too_large"
    with pytest.raises(MessageRefused) as bad:
        check_utf8(b'{"status": "\xff\xfe"}')
    assert bad.value.reason == "not_utf8"
    assert check_device_id("pico-1") == "pico-1"
    for device_id in ("d" * 300, "a b", "x\x00", ""):
        with pytest.raises(MessageRefused) as wrong:
            check_device_id(device_id)
        assert wrong.value.reason == "bad_device_id"


def test_refusals_are_counted_every_time_and_logged_once_per_reason() -> None:
    registry = CollectorRegistry()
    counter = Counter("rejected", "", ["protocol", "reason"], registry=registry)
    refusals = Refusals(counter, "mqtt", log_every=60)
    with capture_logs() as logs:
        for _ in range(3):
            refusals.refused("too_deep", "lab/pico-1/result", MessageRefused("too_deep", "deep"))
        refusals.refused("error", "lab/pico-1/status", RecursionError("secret payload value"))
    assert (
        registry.get_sample_value("rejected_total", {"protocol": "mqtt", "reason": "too_deep"}) == 3
    )
    assert registry.get_sample_value("rejected_total", {"protocol": "mqtt", "reason": "error"}) == 1
    assert [entry["reason"] for entry in logs] == ["too_deep", "error"]
    assert all("secret" not in str(entry) for entry in logs)
    assert logs[0]["topic"] == "lab/pico-1/result"
