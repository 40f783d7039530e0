"""Parsers on their own: the binary sensor frames, CBOR, the request/response JSON body."""

from __future__ import annotations

import binascii
import struct
from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest

from connectors.errors import ParserError
from connectors.parsers import available_parsers, json_parameters, load_parser
from connectors.parsers import cbor_parameters as cbor_parser
from connectors.parsers import sensor_config_parser as frames
from preservarium_pusher_api.core.contract import CommandMessage, Protocol, utc_now

pytestmark = pytest.mark.unit


def message(
    command_type: str, payload: dict[str, Any], request_id: str = "req-1"
) -> CommandMessage:
    return CommandMessage(
        request_id=request_id,
        device_id="sensor-1",
        command_type=command_type,
        payload=payload,
        protocol=Protocol.COAP,
        created_at=utc_now(),
    )


def test_parsers_are_selected_by_name_with_or_without_py() -> None:
    assert {"sensor_config_parser", "cbor_parameters", "json_parameters"} <= set(
        available_parsers()
    )
    assert load_parser("sensor_config_parser.py") is frames
    assert load_parser("sensor_config_parser") is frames
    with pytest.raises(ParserError, match="must be a parser name, not a path"):
        load_parser("../sensor_config_parser.py")


def test_config_update_frame_layout() -> None:
    frame = frames.encode(
        message("config_update", {"measurement_interval": 60, "transmission_interval": 600})
    )
    body = struct.pack(">BBBIB", 0xC5, 1, 1, binascii.crc32(b"req-1"), 0b0011)
    body += struct.pack(">II", 60, 600)
    assert frame == body + struct.pack(">H", binascii.crc_hqx(body, 0xFFFF))
    assert len(frame) == 18
    kind, tag, values = frames.device_read_command(frame)
    assert (kind, tag) == (1, frames.request_tag("req-1"))
    assert values == {"measurement_interval": 60, "transmission_interval": 600}


def test_config_read_is_a_header_only_frame() -> None:
    frame = frames.encode(message("config_read", {}))
    assert frames.device_read_command(frame) == (2, frames.request_tag("req-1"), {})
    with pytest.raises(ValueError, match="config_read takes no parameters"):
        frames.encode(message("config_read", {"channels": [1]}))


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({}, "at least one configuration field"),
        ({"colour": "red"}, "unknown configuration fields: colour"),
        ({"measurement_interval": 0}, "between 1 and 604800"),
        ({"measurement_interval": 1.5}, "integer number of seconds"),
        ({"measurement_interval": True}, "integer number of seconds"),
        ({"channels": [8]}, "channel numbers 0..7"),
        ({"alarm_threshold": 4000}, "between -3276.8 and 3276.7"),
        (
            {"measurement_interval": 60, "transmission_interval": 30},
            "must not be shorter than measurement_interval",
        ),
    ],
)
def test_config_update_payloads_are_checked(payload: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        frames.encode(message("config_update", payload))


def test_other_command_types_are_refused() -> None:
    with pytest.raises(ValueError, match="not 'read_sensor'"):
        frames.encode(message("read_sensor", {}))


def test_answer_frames_decode_to_json_and_are_matched_to_their_request() -> None:
    config = {"measurement_interval": 60, "channels": 0b1001, "alarm_threshold": -55}
    answer = frames.device_answer(frames.request_tag("req-1"), 0, config)
    decoded = frames.decode(answer, "req-1")
    assert decoded.ok and decoded.result == {
        "status": "applied",
        "config": {"measurement_interval": 60, "channels": [0, 3], "alarm_threshold": -5.5},
    }
    refused = frames.decode(frames.device_answer(frames.request_tag("req-1"), 1, {}), "req-1")
    assert not refused.ok and refused.error == "invalid value"
    with pytest.raises(ValueError, match="belongs to another request"):
        frames.decode(answer, "req-2")
    corrupted = answer[:9] + bytes([answer[9] ^ 0x01]) + answer[10:]
    with pytest.raises(ValueError, match="CRC"):
        frames.decode(corrupted, "req-1")
    with pytest.raises(ValueError, match="not a version 1 configuration answer"):
        command_frame = frames.encode(message("config_update", {"channels": [1]}))
        frames.decode(command_frame, "req-1")


def test_cbor_round_trip_and_values_without_a_json_form() -> None:
    frame = cbor_parser.encode(message("calibrate", {"b": [1, 2.5], "a": "x"}))
    assert cbor2.loads(frame) == {"a": "x", "b": [1, 2.5]}
    assert frame == cbor2.dumps({"a": "x", "b": [1, 2.5]}, canonical=True)
    answer = cbor_parser.decode(
        cbor2.dumps({"raw": b"\x01\xff", "at": datetime(2026, 1, 2, tzinfo=UTC)}), "req-1"
    )
    assert answer.ok and answer.result == {"raw": "01ff", "at": "2026-01-02T00:00:00+00:00"}
    envelope = cbor_parser.decode(cbor2.dumps({"status": "error", "error": "jammed"}), "req-1")
    assert not envelope.ok and envelope.error == "jammed"
    with pytest.raises(ValueError, match="not CBOR"):
        cbor_parser.decode(b"\xff\xff", "req-1")
    with pytest.raises(ValueError, match="no JSON form"):
        cbor_parser.decode(cbor2.dumps(cbor2.CBORTag(4242, "x")), "req-1")


def test_json_parameters_takes_an_envelope_or_any_value() -> None:
    assert json_parameters.encode(message("home", {"speed": 2})) == b'{"speed":2}'
    success = json_parameters.decode(b'{"status": "success", "result": 3}', "req-1")
    assert success.ok and success.result == 3
    plain = json_parameters.decode(b'{"temperature": 21.5}', "req-1")
    assert plain.ok and plain.result == {"temperature": 21.5}
    assert json_parameters.decode(b"", "req-1").result is None
    with pytest.raises(ValueError):
        json_parameters.decode(b"not json", "req-1")
