"""Request/response devices (HTTP agents, CoAP resources): the payload is the body.

The command type is already in the address (``/execute/{command_type}``, a CoAP resource
path), so the bytes are just the parameters: ``command.payload`` as compact UTF-8 JSON.
The answer is the JSON envelope's answer, ``{"status": "success"|"error", "result"|"error"}``;
``request_id`` may be left out because the transport knows which request it answers.
"""

from __future__ import annotations

import json

from connectors.parsers import DeviceAnswer
from connectors.parsers.json_envelope import decode as decode_envelope
from preservarium_pusher_api.contract import CommandMessage

CONTENT_TYPE = "application/json"


def encode(command: CommandMessage) -> bytes:
    """``command.payload`` as compact UTF-8 JSON."""
    return json.dumps(command.payload, separators=(",", ":")).encode()


def decode(data: bytes, request_id: str | None = None) -> DeviceAnswer:
    """Read ``{"status", "result"|"error"}``; see ``json_envelope.decode``.

    Raises:
        ValueError: not the answer shape.
    """
    return decode_envelope(data, request_id)
