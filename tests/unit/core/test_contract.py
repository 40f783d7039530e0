"""The wire contract: golden samples round-trip, identifiers are safe, statuses are ordered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from preservarium_pusher_api.core.contract import (
    CancelMessage,
    CommandMessage,
    CommandStatus,
    StatusEvent,
    check_identifier,
    command_headers,
)

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).parents[2] / "fixtures"


@pytest.mark.parametrize(
    ("model", "sample"),
    [
        (CommandMessage, "command_message.json"),
        (StatusEvent, "status_event.json"),
        (CancelMessage, "cancel_message.json"),
    ],
)
def test_golden_samples_round_trip(model: type, sample: str) -> None:
    """Each golden JSON sample parses and serializes back to the same JSON."""
    raw = json.loads((FIXTURES / sample).read_text())
    parsed = model.model_validate_json((FIXTURES / sample).read_text())
    assert json.loads(parsed.model_dump_json()) == raw


def test_shared_core_loads_neither_fastapi_nor_aiokafka_nor_the_api() -> None:
    """Connectors can import the whole shared core without the API's or Kafka client's code."""
    code = (
        "import sys, pkgutil, importlib, preservarium_pusher_api.core as core; "
        "[importlib.import_module('preservarium_pusher_api.core.' + m.name) "
        "for m in pkgutil.iter_modules(core.__path__)]; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'aiokafka', "
        "'starlette', 'sqlalchemy', 'preservarium_pusher_api', 'connectors') "
        "and m != 'preservarium_pusher_api' "
        "and not m.startswith('preservarium_pusher_api.core')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "value", ["", "a/b", "a+b", "a#b", "a b", "tab\there", "nl\n", "\x00", "x" * 129, "del\x7f"]
)
def test_unsafe_identifiers_are_refused(value: str) -> None:
    """Identifiers that would break MQTT topics or logs are refused."""
    with pytest.raises(ValueError, match="must"):
        check_identifier(value)


def test_statuses_only_rank_forward_and_terminals_share_the_last_rank() -> None:
    """queued < sent < delivered < every terminal status, which rank equal."""
    order = [CommandStatus.QUEUED, CommandStatus.SENT, CommandStatus.DELIVERED]
    assert [s.rank for s in order] == [0, 1, 2]
    terminal = [s for s in CommandStatus if s.is_terminal]
    assert {s.rank for s in terminal} == {3}
    assert CommandStatus.CANCELLED in terminal and CommandStatus.DELIVERED not in terminal


def test_command_headers_follow_the_contract() -> None:
    """Headers carry kind, protocol, request_id, content-type and traceparent when given."""
    message = CommandMessage.model_validate_json((FIXTURES / "command_message.json").read_text())
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = dict(command_headers(message, tp))
    assert headers == {
        "kind": b"command",
        "protocol": b"mqtt",
        "request_id": message.request_id.encode(),
        "content-type": b"application/json",
        "traceparent": tp.encode(),
    }
    assert "traceparent" not in dict(command_headers(message))


def test_command_message_rejects_unsafe_device_id() -> None:
    """The contract model itself validates identifiers when it parses a record."""
    raw = json.loads((FIXTURES / "command_message.json").read_text())
    raw["device_id"] = "lab/#"
    with pytest.raises(ValidationError):
        CommandMessage.model_validate(raw)
