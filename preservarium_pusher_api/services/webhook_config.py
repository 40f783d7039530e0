"""Webhook subscriptions: the operator's file (``WEBHOOKS_PATH``), validated and signed for.

The file is YAML (or JSON)::

    subscriptions:
      - name: lims
        url: https://lims.lab.example/hooks/pusher
        secret_env: LIMS_WEBHOOK_SECRET     # or secret: "…" (at least 16 characters)
        events: [status]                    # status, presence (default: both)
        device_ids: [ot2-lab-001]           # default: every device
        statuses: [succeeded, failed, timed_out]

A URL's host must be in ``WEBHOOK_ALLOWED_HOSTS``: no file entry and no request can make the
service call any other host. An entry that breaks a rule is left out (and reported); the
others run. Secrets never reach logs or the status route.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from preservarium_pusher_api.core.contract import CommandStatus
from preservarium_pusher_api.services.events import EventFilter

SIGNATURE_HEADER: Final = "Pusher-Signature"
EVENT_ID_HEADER: Final = "Pusher-Event-Id"
_MIN_SECRET_CHARS: Final = 16
_MAX_FILE_BYTES: Final = 1024 * 1024


class SubscriptionEntry(BaseModel):
    """One subscription as written in the file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = Field(min_length=8, max_length=2048)
    secret: SecretStr | None = None
    secret_env: str | None = Field(None, max_length=128)
    events: list[Literal["status", "presence"]] = Field(default_factory=list)
    device_ids: list[str] = Field(default_factory=list, max_length=1000)
    request_ids: list[str] = Field(default_factory=list, max_length=1000)
    statuses: list[CommandStatus] = Field(default_factory=list)


class SubscriptionsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscriptions: list[dict[str, Any]] = Field(default_factory=list, max_length=1000)


@dataclass(frozen=True)
class Subscription:
    """A subscription that passed every rule, ready to deliver to."""

    name: str
    url: str
    secret: bytes
    wanted: EventFilter

    @property
    def fingerprint(self) -> str:
        """Changes when anything about the subscription changes (the secret included)."""
        text = f"{self.name}|{self.url}|{sorted(self.wanted.device_ids)}|"
        text += f"{sorted(self.wanted.request_ids)}|{sorted(self.wanted.statuses)}|"
        text += f"{sorted(self.wanted.kinds)}"
        return hashlib.sha256(text.encode() + b"|" + self.secret).hexdigest()


@dataclass(frozen=True)
class Loaded:
    """What a file held: the subscriptions that run and why others do not."""

    subscriptions: list[Subscription]
    refused: dict[str, str]


class WebhookConfigError(ValueError):
    """The file as a whole cannot be read (not YAML, wrong shape, too large)."""


def allowed_hosts(setting: str) -> frozenset[str]:
    """``WEBHOOK_ALLOWED_HOSTS`` as lower-case host names (``host`` or ``host:port``)."""
    return frozenset(item.strip().lower() for item in setting.split(",") if item.strip())


def host_allowed(url: str, allowed: Iterable[str]) -> bool:
    """True when ``url`` is http(s) without credentials and its host (or host:port) is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.username or parts.password:
        return False
    host = parts.hostname.lower()
    allowed = set(allowed)
    try:
        port = parts.port
    except ValueError:
        return False
    return host in allowed or (port is not None and f"{host}:{port}" in allowed)


def load_subscriptions(path: Path, allowed: frozenset[str]) -> Loaded:
    """Read and check the file.

    Raises:
        WebhookConfigError: the file cannot be read as a whole.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WebhookConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if len(raw) > _MAX_FILE_BYTES:
        raise WebhookConfigError(f"{path} is larger than {_MAX_FILE_BYTES} bytes")
    try:
        document = SubscriptionsFile.model_validate(yaml.safe_load(raw) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise WebhookConfigError(
            f"{path} is not a subscriptions file: {_first_error(exc)}"
        ) from exc
    subscriptions: list[Subscription] = []
    refused: dict[str, str] = {}
    for index, item in enumerate(document.subscriptions):
        name = str(item.get("name") or f"#{index + 1}")[:64]
        try:
            subscription = _subscription(SubscriptionEntry.model_validate(item), allowed)
        except (ValidationError, ValueError) as exc:
            refused[name] = _first_error(exc)
            continue
        if subscription.name in {s.name for s in subscriptions}:
            refused[name] = "duplicate name"
            continue
        subscriptions.append(subscription)
    return Loaded(subscriptions, refused)


def _subscription(entry: SubscriptionEntry, allowed: frozenset[str]) -> Subscription:
    if not host_allowed(entry.url, allowed):
        raise ValueError("url: host not in WEBHOOK_ALLOWED_HOSTS (or not http/https)")
    if entry.secret is not None:
        secret = entry.secret.get_secret_value()
    elif entry.secret_env:
        secret = os.environ.get(entry.secret_env, "")
    else:
        raise ValueError("secret or secret_env is required")
    if len(secret) < _MIN_SECRET_CHARS:
        raise ValueError(f"secret: at least {_MIN_SECRET_CHARS} characters are required")
    wanted = EventFilter(
        device_ids=frozenset(entry.device_ids),
        request_ids=frozenset(item.lower() for item in entry.request_ids),
        statuses=frozenset(status.value for status in entry.statuses),
        kinds=frozenset(entry.events),
    )
    return Subscription(entry.name, entry.url, secret.encode(), wanted)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ()))
        return f"{where}: {error.get('msg', '')}" if where else str(error.get("msg", ""))
    return str(exc).splitlines()[0][:200]


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Pusher-Signature`` value: ``t=<unix seconds>,v1=<hex HMAC-SHA256>`` of
    ``"<t>." + body`` under the subscription's secret."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
