"""Device registry: the operator's file that says how each device is reached.

``DEVICE_REGISTRY_PATH`` points at YAML or JSON::

    devices:
      pico-w-lab-001:
        protocol: mqtt
        dispatch: on_result          # burst | on_ack | on_result
        timeout_seconds: 30
        parser: json_envelope        # a module of connectors/parsers
      ot2-lab-001:
        protocol: http
        address: {base_url: "http://10.0.0.5:31950"}
        credentials: OT2_LAB_001_TOKEN   # env var or file under CREDENTIALS_DIR

The file is re-read when it changes; a file that does not parse keeps the last good
registry in force (and says so in the logs), so a typo never drops every device.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from preservarium_pusher_api.core.contract import (
    DispatchPolicy,
    Protocol,
    check_command_topic,
    check_identifier,
)
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

CREDENTIALS_DIR_ENV = "CREDENTIALS_DIR"


class DeviceEntry(BaseModel):
    """One device in the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol
    address: dict[str, Any] = Field(default_factory=dict)
    parser: str | None = None
    dispatch: DispatchPolicy | None = None
    timeout_seconds: float | None = Field(None, gt=0)
    credentials: str | None = None
    # MQTT: topics a command may name in metadata.topic besides the device's own.
    allowed_topics: tuple[str, ...] = ()

    @field_validator("allowed_topics")
    @classmethod
    def _allowed_topics_are_command_topics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for topic in value:
            check_command_topic(topic)
        return value

    def secret(self) -> str | None:
        """The credential the reference names: an env var, else a file in CREDENTIALS_DIR.

        Returns None when the entry has no reference; raises LookupError when it names
        something that does not exist.
        """
        if not self.credentials:
            return None
        if value := os.environ.get(self.credentials):
            return value
        directory = Path(os.environ.get(CREDENTIALS_DIR_ENV, "/run/secrets"))
        candidate = directory / self.credentials
        if "/" not in self.credentials and candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip()
        raise LookupError(f"credential {self.credentials!r} is not set")


class RegistryFile(BaseModel):
    """The file's top level."""

    model_config = ConfigDict(extra="forbid")

    devices: dict[str, DeviceEntry] = Field(default_factory=dict)

    @field_validator("devices")
    @classmethod
    def _ids_are_identifiers(cls, value: dict[str, DeviceEntry]) -> dict[str, DeviceEntry]:
        for device_id in value:
            check_identifier(device_id)
        return value


def parse_registry(text: str, suffix: str) -> dict[str, DeviceEntry]:
    """Parse registry text (JSON for ``.json``, YAML otherwise).

    Raises:
        ValueError: the text is not a valid registry (the message says where).
    """
    try:
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"not valid {'JSON' if suffix == '.json' else 'YAML'}: {exc}") from exc
    try:
        return RegistryFile.model_validate(data or {}).devices
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(problems) from exc


class DeviceRegistry:
    """The devices known to the connectors, kept current with the operator's file."""

    def __init__(self, path: Path | None, reload_seconds: float = 1.0) -> None:
        self.path = path
        self._reload_seconds = reload_seconds
        self._devices: dict[str, DeviceEntry] = {}
        self._stamp: tuple[float, int] | None = None
        self.last_error: str | None = None

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device_id: str) -> DeviceEntry | None:
        """The registry entry of a device, or None when it is not registered."""
        return self._devices.get(device_id)

    def load(self) -> bool:
        """Re-read the file if it changed; True when a new registry took effect."""
        if self.path is None:
            return False
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None or self.last_error is None:
                log.warning("device registry file not found", path=str(self.path))
                self.last_error = "file not found"
            return False
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            devices = parse_registry(self.path.read_text(encoding="utf-8"), self.path.suffix)
        except (ValueError, OSError) as exc:
            self.last_error = str(exc)[:500]
            log.error(
                "device registry not loaded; keeping the previous one",
                path=str(self.path),
                error=self.last_error,
            )
            return False
        self._devices = devices
        self.last_error = None
        log.info("device registry loaded", path=str(self.path), devices=len(devices))
        return True

    async def watch(self) -> None:
        """Reload whenever the file changes, until cancelled."""
        while True:
            await asyncio.sleep(self._reload_seconds)
            self.load()
