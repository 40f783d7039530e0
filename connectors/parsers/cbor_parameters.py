"""CBOR (RFC 8949) for devices that speak it: the payload as a CBOR map, answers in CBOR.

Like ``json_parameters`` with CBOR instead of JSON (cbor2 encodes and decodes): the
command bytes are ``command.payload``; the answer is either the envelope
``{"status": "success"|"error", "result"|"error"}`` or any CBOR value, which is then the
result. CBOR tags that have no JSON form (dates, bignums, byte strings) are turned into
JSON-friendly values: dates as ISO 8601 text, byte strings as lowercase hex.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import cbor2

from connectors.parsers import DeviceAnswer, answer_from_value
from preservarium_pusher_api.core.contract import CommandMessage

CONTENT_TYPE = "application/cbor"
_MAX_DEPTH = 32


def encode(command: CommandMessage) -> bytes:
    """``command.payload`` as canonical CBOR."""
    return cbor2.dumps(command.payload, canonical=True)


def _jsonable(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError("answer nests too deeply")
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, cbor2.CBORTag | cbor2.CBORSimpleValue):
        raise ValueError(f"CBOR value {value!r} has no JSON form")
    return value


def decode(data: bytes, request_id: str | None = None) -> DeviceAnswer:
    """Read a CBOR answer; see the module docstring.

    Raises:
        ValueError: not CBOR, or a value with no JSON form.
    """
    try:
        decoded = cbor2.loads(data) if data else None
    except cbor2.CBORError as exc:
        raise ValueError(f"not CBOR: {exc}") from exc
    return answer_from_value(_jsonable(decoded), request_id)
