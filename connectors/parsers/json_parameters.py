"""Request/response devices (HTTP agents, CoAP resources): the payload is the body.

The command type is already in the address (``/execute/{command_type}``, a CoAP resource
path), so the bytes are just the parameters: ``command.payload`` as compact UTF-8 JSON.

The answer is either the JSON envelope's answer, ``{"status": "success"|"error",
"result"|"error"}`` (``request_id`` may be left out: the transport knows which request it
answers), or any other JSON value, which is then the result as it is. An empty answer is a
result of ``null``.
"""

from __future__ import annotations

import json
from typing import Any

from connectors.parsers import DeviceAnswer, answer_from_value
from preservarium_pusher_api.core.contract import CommandMessage

CONTENT_TYPE = "application/json"


def encode(command: CommandMessage) -> bytes:
    """``command.payload`` as compact UTF-8 JSON."""
    return json.dumps(command.payload, separators=(",", ":")).encode()


def decode(data: bytes, request_id: str | None = None) -> DeviceAnswer:
    """Read the answer; see the module docstring.

    Raises:
        ValueError: not JSON, or an envelope without a request_id to attach it to.
    """
    value: Any = json.loads(data) if data.strip() else None
    return answer_from_value(value, request_id)
