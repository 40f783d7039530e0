"""Compact binary frames for sensor configuration (``config_update``, ``config_read``).

For battery sensors on CoAP where every byte on air costs energy. Select it with
``parser_script_ref: "sensor_config_parser"`` (or ``parser:`` in the registry).

Command frame, version 1, big-endian::

    offset size field
    0      1    magic 0xC5
    1      1    version 0x01
    2      1    type: 0x01 config_update, 0x02 config_read
    3      4    tag: CRC-32 of the request_id (UTF-8); the answer carries it back
    7      1    field mask: bit 0 measurement_interval, bit 1 transmission_interval,
                bit 2 channels, bit 3 alarm_threshold (config_read: 0)
    8      …    the fields whose bit is set, in bit order:
                  measurement_interval   u32  seconds, 1..604800
                  transmission_interval  u32  seconds, 1..604800 (≥ measurement_interval
                                              when both are given)
                  channels               u8   bit i set = channel i on (channels 0..7)
                  alarm_threshold        i16  tenths (-3276.8..3276.7)
    end-2  2    CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of every byte before it

``config_update`` payload: ``{"measurement_interval": 60, "transmission_interval": 600,
"channels": [0, 2], "alarm_threshold": 25.5}``, at least one of them; unknown keys are
refused. A two-field update is 18 bytes, against 55 as JSON.

Answer frame: the same layout with type 0x81, and a status byte after the tag::

    0 magic · 1 version · 2 type 0x81 · 3 tag (4) · 7 status · 8 mask · 9 fields · CRC-16

status 0 applied, 1 invalid value, 2 unsupported, 3 busy; the fields are the configuration
now in force. ``decode`` gives ``{"status": "applied", "config": {…}}`` (or ``failed`` with
the status's meaning). The ``device_*`` functions are the device's half, used by the
simulator and as the reference for firmware.
"""

from __future__ import annotations

import binascii
import struct
import zlib
from typing import Any

from connectors.parsers import DeviceAnswer
from preservarium_pusher_api.core.contract import CommandMessage

CONTENT_TYPE = "application/octet-stream"
MAGIC = 0xC5
VERSION = 1
TYPES = {"config_update": 0x01, "config_read": 0x02}
ANSWER_TYPE = 0x81
STATUS = {0: "applied", 1: "invalid value", 2: "unsupported", 3: "busy"}
MAX_INTERVAL = 604_800

# (name, struct format) in mask bit order
FIELDS: tuple[tuple[str, str], ...] = (
    ("measurement_interval", "I"),
    ("transmission_interval", "I"),
    ("channels", "B"),
    ("alarm_threshold", "h"),
)
_HEADER = struct.Struct(">BBBIB")  # magic, version, type, tag, mask
_ANSWER_HEADER = struct.Struct(">BBBIBB")  # magic, version, type, tag, status, mask


def request_tag(request_id: str) -> int:
    """The 32-bit tag that ties an answer to its command."""
    return zlib.crc32(request_id.encode())


def _crc(data: bytes) -> bytes:
    return struct.pack(">H", binascii.crc_hqx(data, 0xFFFF))


def _check_crc(frame: bytes) -> bytes:
    if len(frame) < 3 or _crc(frame[:-2]) != frame[-2:]:
        raise ValueError("frame CRC does not match")
    return frame[:-2]


def _pack_fields(config: dict[str, Any]) -> tuple[int, bytes]:
    """Wire values of a configuration → (mask, bytes)."""
    mask, body = 0, b""
    for bit, (name, fmt) in enumerate(FIELDS):
        if name in config:
            mask |= 1 << bit
            body += struct.pack(">" + fmt, config[name])
    return mask, body


def _unpack_fields(mask: int, body: bytes) -> dict[str, int]:
    values: dict[str, int] = {}
    offset = 0
    for bit, (name, fmt) in enumerate(FIELDS):
        if mask & (1 << bit):
            size = struct.calcsize(">" + fmt)
            if offset + size > len(body):
                raise ValueError("frame ends inside a field")
            (values[name],) = struct.unpack_from(">" + fmt, body, offset)
            offset += size
    if offset != len(body) or mask >> len(FIELDS):
        raise ValueError("frame has bytes or mask bits no field accounts for")
    return values


def to_wire(payload: dict[str, Any]) -> dict[str, int]:
    """Check a ``config_update`` payload and turn it into wire values.

    Raises:
        ValueError: an unknown key, a value out of range, or nothing to update.
    """
    unknown = sorted(set(payload) - {name for name, _ in FIELDS})
    if unknown:
        raise ValueError(f"unknown configuration fields: {', '.join(unknown)}")
    wire: dict[str, int] = {}
    for name in ("measurement_interval", "transmission_interval"):
        if name in payload:
            value = payload[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer number of seconds")
            if not 1 <= value <= MAX_INTERVAL:
                raise ValueError(f"{name} must be between 1 and {MAX_INTERVAL} seconds")
            wire[name] = value
    if (
        "measurement_interval" in wire
        and "transmission_interval" in wire
        and wire["transmission_interval"] < wire["measurement_interval"]
    ):
        raise ValueError("transmission_interval must not be shorter than measurement_interval")
    if "channels" in payload:
        channels = payload["channels"]
        if not isinstance(channels, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 7 for c in channels
        ):
            raise ValueError("channels must be a list of channel numbers 0..7")
        wire["channels"] = sum(1 << c for c in set(channels))
    if "alarm_threshold" in payload:
        threshold = payload["alarm_threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError("alarm_threshold must be a number")
        tenths = round(threshold * 10)
        if not -32768 <= tenths <= 32767:
            raise ValueError("alarm_threshold must be between -3276.8 and 3276.7")
        wire["alarm_threshold"] = tenths
    if not wire:
        raise ValueError("config_update needs at least one configuration field")
    return wire


def from_wire(values: dict[str, int]) -> dict[str, Any]:
    """Wire values → the JSON form of a configuration."""
    config: dict[str, Any] = {}
    for name, value in values.items():
        if name == "channels":
            config[name] = [c for c in range(8) if value & (1 << c)]
        elif name == "alarm_threshold":
            config[name] = value / 10
        else:
            config[name] = value
    return config


def encode(command: CommandMessage) -> bytes:
    """The command frame for ``config_update`` / ``config_read``.

    Raises:
        ValueError: another command type, or a payload ``to_wire`` refuses.
    """
    kind = TYPES.get(command.command_type)
    if kind is None:
        raise ValueError(
            f"sensor_config_parser encodes {', '.join(TYPES)}, not {command.command_type!r}"
        )
    if kind == TYPES["config_read"]:
        if command.payload:
            raise ValueError("config_read takes no parameters")
        mask, body = 0, b""
    else:
        mask, body = _pack_fields(to_wire(command.payload))
    frame = _HEADER.pack(MAGIC, VERSION, kind, request_tag(command.request_id), mask) + body
    return frame + _crc(frame)


def decode(data: bytes, request_id: str | None = None) -> DeviceAnswer:
    """The device's answer frame as a result.

    Raises:
        ValueError: not an answer frame, a bad CRC, or the tag of another request.
    """
    if request_id is None:
        raise ValueError("sensor_config_parser answers are matched by the transport")
    frame = _check_crc(bytes(data))
    if len(frame) < _ANSWER_HEADER.size:
        raise ValueError("answer frame too short")
    magic, version, kind, tag, status, mask = _ANSWER_HEADER.unpack_from(frame)
    if (magic, version, kind) != (MAGIC, VERSION, ANSWER_TYPE):
        raise ValueError("not a version 1 configuration answer")
    if tag != request_tag(request_id):
        raise ValueError("the answer belongs to another request")
    config = from_wire(_unpack_fields(mask, frame[_ANSWER_HEADER.size :]))
    meaning = STATUS.get(status, f"status {status}")
    if status != 0:
        return DeviceAnswer(request_id, ok=False, result={"config": config}, error=meaning)
    return DeviceAnswer(request_id, ok=True, result={"status": meaning, "config": config})


# -- the device's half (simulator, firmware reference) -------------------------------


def device_read_command(frame: bytes) -> tuple[int, int, dict[str, int]]:
    """A command frame as the device reads it → (type, tag, wire values).

    Raises:
        ValueError: bad magic/version/CRC or a malformed body.
    """
    body = _check_crc(bytes(frame))
    if len(body) < _HEADER.size:
        raise ValueError("command frame too short")
    magic, version, kind, tag, mask = _HEADER.unpack_from(body)
    if (magic, version) != (MAGIC, VERSION):
        raise ValueError("not a version 1 configuration frame")
    return kind, tag, _unpack_fields(mask, body[_HEADER.size :])


def device_answer(tag: int, status: int, config: dict[str, int]) -> bytes:
    """The answer frame a device sends: status and the configuration now in force."""
    mask, body = _pack_fields(config)
    frame = _ANSWER_HEADER.pack(MAGIC, VERSION, ANSWER_TYPE, tag, status, mask) + body
    return frame + _crc(frame)
