"""structlog set-up: JSON lines by default, a readable console format for development.

Standard-library loggers (uvicorn, aiokafka) go through the same renderer, and every line
carries what was bound to the current request (``http_request_id`` and, for command lines,
``request_id``, ``device_id``, ``command_type``, ``protocol``). Payload values and API keys
are never bound or logged.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """The project's logger for module ``name`` (appears as ``logger`` in each line)."""
    # initial values, not .bind(): binding now would freeze the configuration of import time.
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger


def _logger_field(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Name the module under ``logger``, as the standard-library lines do."""
    if "logger_name" in event:
        event["logger"] = event.pop("logger_name")
    return event


def _component_prefix(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Console lines start with ``[component]`` when one is bound (``pusher dev``)."""
    component = event.pop("component", None)
    if component:
        event["event"] = f"[{component}] {event.get('event', '')}"
    return event


def configure_logging(
    level: str = "INFO",
    fmt: Literal["json", "console"] = "json",
    stream: TextIO | None = None,
) -> None:
    """Route structlog and standard logging to ``stream`` (stderr) in one format.

    The project's own lines are rendered by structlog and written directly (no
    ``logging.LogRecord`` per line: on the command path that costs more than the work
    being logged). Standard-library loggers (uvicorn, aiokafka) go through the same
    renderer via ``ProcessorFormatter``.

    Args:
        level: minimum level name, e.g. ``"INFO"``.
        fmt: ``"json"`` for one JSON object per line, ``"console"`` for people.
        stream: where lines go; stderr by default.
    """
    out = stream if stream is not None else sys.stderr
    renderer: structlog.types.Processor
    prefix: list[structlog.types.Processor] = []
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        prefix = [_component_prefix]
    else:
        renderer = structlog.processors.JSONRenderer()

    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _logger_field,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            *prefix,
            renderer,
        ],
        # Disabled levels are dropped by the bound logger before any processor runs.
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            *prefix,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # aiokafka's DEBUG lines print whole record values (command payloads): never below INFO.
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, root.level))
    # aiosqlite's DEBUG lines print statements with their parameters (results, details).
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    # The API logs one access line per request itself, with the route template.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
