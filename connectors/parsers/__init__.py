"""Parsers: a device's bytes from a command, and a result from the device's answer.

``parser_script_ref`` (in a command, or ``parser`` in the device registry) names a module
of this package, with or without ``.py``: ``"json_envelope"``, ``"json_envelope.py"``.
That is an allow-list, not a path: a reference with a path separator, a dot other than the
``.py`` suffix, or a name that is not a module here is refused with a clear reason.

A parser module defines::

    def encode(command: CommandMessage) -> bytes: ...
    def decode(data: bytes, request_id: str | None = None) -> DeviceAnswer: ...

``decode`` gets ``request_id`` when the transport already knows which command the answer
belongs to (a CoAP or HTTP response); MQTT answers carry it in the message.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from connectors.errors import ParserError
from preservarium_pusher_api.core.contract import CommandMessage

DEFAULT_PARSER = "json_envelope"
_cache: dict[str, ModuleType] = {}


@dataclass(frozen=True, slots=True)
class DeviceAnswer:
    """What a device answered about one command."""

    request_id: str
    ok: bool
    result: Any = None
    error: str | None = None


def answer_from_value(value: Any, request_id: str | None) -> DeviceAnswer:
    """A decoded answer (JSON, CBOR): the envelope's status when it is one, else the value
    itself as a successful result.

    Raises:
        ValueError: no request_id in the answer nor from the transport.
    """
    answer_id = request_id
    if isinstance(value, dict) and value.get("status") in ("success", "error"):
        answer_id = value.get("request_id") or request_id
        if not isinstance(answer_id, str) or not answer_id:
            raise ValueError("answer has no request_id")
        if value["status"] == "error":
            error = value.get("error")
            return DeviceAnswer(answer_id, ok=False, error=str(error) if error else "error")
        return DeviceAnswer(answer_id, ok=True, result=value.get("result"))
    if not answer_id:
        raise ValueError("answer has no request_id")
    return DeviceAnswer(answer_id, ok=True, result=value)


class Parser(Protocol):
    """What a parser module provides."""

    def encode(self, command: CommandMessage) -> bytes:
        """The bytes the device receives for ``command``."""
        ...

    def decode(
        self, data: bytes, request_id: str | None = None
    ) -> DeviceAnswer:  # pragma: no cover
        """The device's answer as a DeviceAnswer; raises ValueError when it is not one."""
        ...


@functools.cache
def _parser_modules() -> tuple[str, ...]:
    return tuple(
        sorted(
            info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")
        )
    )


def available_parsers() -> list[str]:
    """Names of the parser modules in this package (the allow-list; read once per process:
    parsers are code, deployed with the connector)."""
    return list(_parser_modules())


def parser_name(ref: str | None) -> str:
    """Normalise a parser reference to a module name, checking the allow-list.

    Raises:
        ParserError: a path, a dotted name, or a parser that does not exist.
    """
    if ref is None or not ref.strip():
        return DEFAULT_PARSER
    name = ref.strip()
    if "/" in name or "\\" in name:
        raise ParserError(f"parser reference {ref!r} must be a parser name, not a path")
    name = name.removesuffix(".py")
    if not name.isidentifier() or name.startswith("_"):
        raise ParserError(f"parser reference {ref!r} is not a parser name")
    if name not in _parser_modules():
        raise ParserError(f"parser {name!r} not found; available: {', '.join(available_parsers())}")
    return name


def load_parser(ref: str | None) -> Parser:
    """The parser module ``ref`` names (cached).

    Raises:
        ParserError: see ``parser_name``, or the module lacks ``encode``/``decode``.
    """
    name = parser_name(ref)
    module = _cache.get(name)
    if module is None:
        module = importlib.import_module(f"{__name__}.{name}")
        if not (
            callable(getattr(module, "encode", None)) and callable(getattr(module, "decode", None))
        ):
            raise ParserError(f"parser {name!r} does not define encode() and decode()")
        _cache[name] = module
    parser: Parser = module
    return parser
