"""A connector whose helper task dies stops with TaskDied instead of running half-alive."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from connectors.runtime import ConnectorRuntime
from connectors.settings import ConnectorSettings
from preservarium_pusher_api.core.supervision import TaskDied
from tests.conftest import SettingsFactory
from tests.fakes import FakeTransport
from tests.mqtt_helpers import registry_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class DyingTransport(FakeTransport):
    """Connected until its reader hits a bug."""

    async def run(self) -> None:
        await asyncio.sleep(1.0)
        raise RuntimeError("reader bug")


async def test_a_dead_transport_reader_stops_the_connector(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = registry_settings(ConnectorSettings, make_settings(), tmp_path, {})
    runtime = ConnectorRuntime(settings, DyingTransport())
    with capture_logs() as logs, pytest.raises(TaskDied, match="'transport'"):
        async with asyncio.timeout(30):
            await runtime.run()
    died = [e for e in logs if e["event"] == "task died; stopping the process"]
    assert died and died[0]["error"] == "RuntimeError"
    assert any(e["event"] == "connector stopped" for e in logs)
