"""A command cannot speak for another device: topics are confined, answers are not forged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pusher_dev.mosquitto import PrivateMosquitto

from tests.api_helpers import wait_status
from tests.conftest import LiveApi, SettingsFactory, assert_error_shape, command, serve
from tests.mqtt_helpers import mqtt_listener, mqtt_settings, running_connector, simulators

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
async def lab(
    make_settings: SettingsFactory, mosquitto: PrivateMosquitto, tmp_path: Path
) -> AsyncIterator[tuple[LiveApi, str]]:
    base = make_settings(tracker_enabled=True)
    settings = mqtt_settings(base, mosquitto)
    async with serve(base) as api, running_connector(settings):
        yield api, settings.mqtt_topic_prefix


async def test_forging_commands_are_refused_and_the_victims_command_untouched(
    lab: tuple[LiveApi, str], mosquitto: PrivateMosquitto
) -> None:
    api, prefix = lab
    async with simulators(mosquitto, prefix, "pico-victim", latency=2.0, recent_requests=0) as (
        victim,
    ):
        response = await api.client.post(
            "/api/v1/commands",
            json=command(device_id="pico-victim", metadata={"dispatch": "on_result"}),
        )
        victim_command = response.json()["request_id"]
        await wait_status(api, victim_command, "delivered")
        forged = {"request_id": victim_command, "status": "success", "result": {"forged": True}}
        # What the API can tell: a device's result or status topic is never a command topic.
        for topic, payload, extra in (
            (f"{prefix}/pico-victim/result", forged, {}),
            (f"{prefix}/pico-victim/status", {"status": "offline"}, {"retain": True}),
        ):
            refused = await api.client.post(
                "/api/v1/commands",
                json=command(
                    device_id="pico-attacker",
                    parser_script_ref="json_parameters",
                    payload=payload,
                    metadata={"topic": topic},
                    **extra,
                ),
            )
            assert "metadata" in str(assert_error_shape(refused, 422)["details"])
        # What only the connector can tell: the registry lists no such topic for the device.
        async with mqtt_listener(mosquitto, f"{prefix}/pico-victim/#") as seen:
            accepted = await api.client.post(
                "/api/v1/commands",
                json=command(
                    device_id="pico-attacker",
                    metadata={"topic": f"{prefix}/pico-victim/command"},
                ),
            )
            attacker = accepted.json()["request_id"]
            failed = await wait_status(api, attacker, "failed")
            assert "allowed_topics" in failed["detail"]
            final = await wait_status(api, victim_command, "succeeded")
        assert [t for t, _, _ in seen if t.endswith("/command")] == []
    assert final["result"] != {"forged": True}
    assert victim.executed[victim_command] == 1
    assert victim.executed[attacker] == 0
