"""structlog set-up: JSON lines by default, a readable console format for development.

Standard-library loggers (uvicorn, aiokafka) go through the same renderer, and every line
carries what was bound to the current request (``http_request_id`` and, for command lines,
``request_id``, ``device_id``, ``command_type``, ``protocol``). Payload values and API keys
are never bound or logged.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "INFO", fmt: Literal["json", "console"] = "json") -> None:
    """Route structlog and standard logging to stderr in one format.

    Args:
        level: minimum level name, e.g. ``"INFO"``.
        fmt: ``"json"`` for one JSON object per line, ``"console"`` for people.
    """
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # drop disabled levels before any work
            *_SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka's DEBUG lines print whole record values (command payloads): never below INFO.
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, root.level))
    # The API logs one access line per request itself, with the route template.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
