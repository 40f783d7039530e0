"""The Pico W firmware's own modules (``firmware/pico_w``), loaded into CPython.

The simulator runs the board's ``device.py`` and ``tasks.py`` unchanged, so firmware and
simulator cannot drift. MicroPython-only pieces get small stand-ins: a ``machine`` module
whose pins do nothing (an ADC reads a random value), ``time.sleep_ms``/``ticks_ms``, and
``gc.mem_free``. ``gc.collect`` is a no-op here: the board collects after every command to
keep its few kilobytes free, which on CPython would cost milliseconds per command for
nothing. The firmware folder is found beside ``devtools/`` in a checkout, or at
``PICO_FIRMWARE_DIR`` (the demo image).
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

_CHECKOUT_FIRMWARE = Path(__file__).resolve().parents[2] / "firmware" / "pico_w"


def firmware_dir() -> Path:
    """Where ``device.py`` and ``tasks.py`` are read from."""
    configured = os.environ.get("PICO_FIRMWARE_DIR")
    return Path(configured) if configured else _CHECKOUT_FIRMWARE


class _Pin:
    OUT = 1
    IN = 0

    def __init__(self, pin: int, mode: int | None = None) -> None:
        self.pin = pin

    def value(self, level: int | None = None) -> int:
        return level or 0


class _ADC:
    def __init__(self, pin: int) -> None:
        self.pin = pin

    def read_u16(self) -> int:
        return random.randint(0, 65535)  # noqa: S311 - a simulated reading


class _PWM:
    def __init__(self, pin: _Pin) -> None:
        self.pin = pin

    def freq(self, hz: int) -> None:
        """The servo's PWM frequency; nothing to drive here."""

    def duty_u16(self, duty: int) -> None:
        """The servo's pulse width; nothing to drive here."""

    def deinit(self) -> None:
        """Release the PWM slice; nothing to release here."""


def _machine_module() -> types.ModuleType:
    machine = types.ModuleType("machine", "Stand-in for MicroPython's machine module.")
    machine.Pin = _Pin  # type: ignore[attr-defined]
    machine.ADC = _ADC  # type: ignore[attr-defined]
    machine.PWM = _PWM  # type: ignore[attr-defined]
    return machine


def _micropython_time() -> types.SimpleNamespace:
    started = time.monotonic()
    return types.SimpleNamespace(
        time=time.time,
        # A blocking sleep would stall every simulated board in the event loop; the
        # simulator has its own latency setting instead.
        sleep_ms=lambda _ms: None,
        ticks_ms=lambda: int((time.monotonic() - started) * 1000),
    )


def _micropython_gc() -> types.SimpleNamespace:
    return types.SimpleNamespace(collect=lambda: None, mem_free=lambda: 150_000)


def _load(name: str) -> types.ModuleType:
    path = firmware_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pusher_dev.firmware_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the Pico W firmware from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Module globals are looked up at call time, so the stand-ins apply to every call.
    module.time = _micropython_time()  # type: ignore[attr-defined]
    module.gc = _micropython_gc()  # type: ignore[attr-defined]
    return module


@dataclass(frozen=True)
class Firmware:
    """The firmware's command handling: its ``Device`` class and its task registry."""

    device_class: type[Any]
    tasks: dict[str, Callable[..., Any]]


@cache
def load_firmware() -> Firmware:
    """Load ``device.py`` and ``tasks.py`` once per process, with the stand-ins in place."""
    sys.modules.setdefault("machine", _machine_module())
    device = _load("device")
    tasks = _load("tasks")
    return Firmware(device_class=device.Device, tasks=dict(tasks.TASKS))
