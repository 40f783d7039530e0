"""Default parser: the JSON envelope every device of the original design understands.

Command bytes: ``{"request_id": …, "task": command_type, "parameters": payload}`` (exactly
these keys). Answer: ``{"request_id", "task", "status": "success"|"error", "result"|"error",
"timestamp"}``; ``task`` and ``timestamp`` are optional.
"""

from __future__ import annotations

import json
from typing import Any

from connectors.parsers import DeviceAnswer
from preservarium_pusher_api.core.contract import CommandMessage

CONTENT_TYPE = "application/json"


def encode(command: CommandMessage) -> bytes:
    """The envelope for ``command``, compact UTF-8 JSON."""
    envelope = {
        "request_id": command.request_id,
        "task": command.command_type,
        "parameters": command.payload,
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def decode(data: bytes, request_id: str | None = None) -> DeviceAnswer:
    """Read a device answer.

    Raises:
        ValueError: not JSON, not an object, no request_id, or an unknown status.
    """
    answer: Any = json.loads(data)
    if not isinstance(answer, dict):
        raise ValueError("answer is not a JSON object")
    answer_id = answer.get("request_id") or request_id
    if not isinstance(answer_id, str) or not answer_id:
        raise ValueError("answer has no request_id")
    status = answer.get("status")
    if status == "success":
        return DeviceAnswer(answer_id, ok=True, result=answer.get("result"))
    if status == "error":
        error = answer.get("error")
        return DeviceAnswer(answer_id, ok=False, error=str(error) if error is not None else "error")
    raise ValueError(f"answer status must be 'success' or 'error', not {status!r}")
