"""Deployment files checked against the code: compose, Dockerfile, Prometheus, Grafana.

There is no Docker engine here, so nothing is built; instead every name the deployment
uses is checked against what the code reads or exports, so renaming a setting, a console
script or a metric without updating the deployment fails here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pusher_dev.embedded_kafka import free_port

from connectors.http.transport import HttpTransport
from connectors.registry import parse_registry
from connectors.settings import CoapSettings, HttpSettings, MqttSettings
from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.contract import DLQ_SUFFIX
from preservarium_pusher_api.core.settings import CoreSettings
from pusher_cli.main import build_parser
from tests.api_helpers import wait_terminal
from tests.conftest import SettingsFactory, serve
from tests.mqtt_helpers import running_connector

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "pusher.json").read_text())
# Environment names the images read that are not settings fields.
NOT_SETTINGS = {"HEALTHCHECK_URL", "OT2_AGENT_TOKEN"}
CONNECTOR_SETTINGS = {"mqtt": MqttSettings, "http": HttpSettings, "coap": CoapSettings}


def pusher_services() -> dict[str, dict[str, Any]]:
    """Services running the pusher image with a ``pusher`` command."""
    return {
        name: service
        for name, service in SERVICES.items()
        if service.get("build", {}).get("target") == "runtime" and "entrypoint" not in service
    }


def settings_class(command: list[str]) -> type[CoreSettings]:
    if command[0] == "connector":
        return CONNECTOR_SETTINGS[command[1]]
    return Settings


def default_of(value: str) -> str:
    """``${NAME:-default}`` → default."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-([^}]*)\}", value)
    return match.group(1) if match else value


def dockerfile_healthchecked(service: dict[str, Any]) -> bool:
    return service.get("build", {}).get("target") in ("runtime", "ot2-agent")


def test_every_service_has_an_image_restart_policy_limits_and_a_healthcheck() -> None:
    assert {"kafka", "kafka-init", "mosquitto", "postgres", "redis", "api", "tracker",
            "connector-mqtt", "connector-mqtt-2", "connector-http", "connector-coap", "prometheus",
            "grafana"} <= set(SERVICES)  # fmt: skip
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
        assert service.get("restart") in ("unless-stopped", "no"), name
        assert service.get("deploy", {}).get("resources", {}).get("limits"), name
        if service["restart"] != "no":
            assert "healthcheck" in service or dockerfile_healthchecked(service), name
    assert SERVICES["api"]["deploy"]["replicas"] == 2
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    demo = {n for n, s in SERVICES.items() if "demo" in s.get("profiles", [])}
    assert demo == {"pico-sim", "coap-sim", "ot2-sim"}
    observability = {n for n, s in SERVICES.items() if "observability" in s.get("profiles", [])}
    assert observability == {"prometheus", "grafana"}


def test_depends_on_waits_for_health_of_services_that_exist() -> None:
    for name, service in SERVICES.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES, (name, dependency)
            wanted = condition["condition"]
            assert wanted in ("service_healthy", "service_completed_successfully"), name
            if wanted == "service_healthy":
                target = SERVICES[dependency]
                assert "healthcheck" in target or dockerfile_healthchecked(target), dependency
            else:
                assert SERVICES[dependency]["restart"] == "no", dependency


def test_pusher_commands_parse_and_env_names_are_settings() -> None:
    """Each command is accepted by the CLI; each variable is a field of that role's settings."""
    services = pusher_services()
    assert set(services) == {
        "api", "tracker", "connector-mqtt", "connector-mqtt-2", "connector-http", "connector-coap"
    }  # fmt: skip
    for name, service in services.items():
        command = service["command"]
        args = build_parser().parse_args(command)
        if command[0] == "connector":
            from connectors.main import build_parser as connector_parser

            connector_parser().parse_args(args.connector_args)
        fields = {field.upper() for field in settings_class(command).model_fields}
        unknown = sorted(set(service["environment"]) - fields - NOT_SETTINGS)
        assert unknown == [], f"{name}: not settings: {unknown}"
        port = {"api": "API_PORT", "tracker": "TRACKER_METRICS_PORT"}.get(
            name, "CONNECTOR_METRICS_PORT"
        )
        assert f":{service['environment'][port]}/" in service["environment"]["HEALTHCHECK_URL"]
    # production settings: idempotent producer on, auth on, limits shared through Redis
    api = services["api"]["environment"]
    assert api["KAFKA_ENABLE_IDEMPOTENCE"] == "true" and api["ENABLE_AUTH"] == "true"
    assert api["RATE_LIMIT_STORAGE_URI"].startswith("redis://redis:")
    assert api["STATUS_STORE_URL"].startswith("postgresql+asyncpg://")


def test_topics_and_partitions_come_from_the_settings() -> None:
    init = SERVICES["kafka-init"]
    environment = init["environment"]
    defaults = Settings.model_fields
    assert default_of(environment["KAFKA_COMMAND_TOPIC"]) == defaults["kafka_command_topic"].default
    assert default_of(environment["KAFKA_RESULT_TOPIC"]) == defaults["kafka_result_topic"].default
    assert (
        default_of(environment["KAFKA_PRESENCE_TOPIC"]) == defaults["kafka_presence_topic"].default
    )
    assert int(default_of(environment["KAFKA_TOPIC_PARTITIONS"])) == (
        defaults["kafka_topic_partitions"].default
    )
    script = init["command"][0]
    assert f'"$$KAFKA_COMMAND_TOPIC{DLQ_SUFFIX}"' in script and "--partitions" in script
    for name, service in pusher_services().items():
        # only the API and the tracker may create topics; kafka-init does it instead
        if "kafka_create_topics" in settings_class(service["command"]).model_fields:
            assert service["environment"]["KAFKA_CREATE_TOPICS"] == "false", name
        else:
            assert "KAFKA_CREATE_TOPICS" not in service["environment"], name


def test_registry_secrets_and_simulators_are_wired() -> None:
    registry_file = ROOT / "deploy" / "devices.yaml"
    devices = parse_registry(registry_file.read_text(), ".yaml")
    for device in devices.values():
        if device.credentials:
            connector = SERVICES[f"connector-{device.protocol.value}"]
            assert device.credentials in connector["environment"], device
        if device.protocol.value == "http":
            host = device.address["base_url"].split("//")[1].split(":")[0]
            assert host in SERVICES
        if device.protocol.value == "coap":
            assert device.address["host"] in SERVICES
    for name in ("pico-sim", "coap-sim"):
        module = SERVICES[name]["entrypoint"][-1]
        assert importlib.util.find_spec(module) is not None, module
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (ROOT / "docker-compose.yml").read_text()))
    example = (ROOT / ".env.example").read_text()
    assert required and all(f"\n{name}=" in f"\n{example}" for name in required), required
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text()


def test_dockerfile_entry_commands_are_console_scripts() -> None:
    stages = re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, re.M)
    assert stages == ["build", "runtime", "demo", "ot2-agent"]
    runtime = DOCKERFILE.split("AS runtime")[1].split("AS demo")[0]
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", runtime, re.M).group(1))  # type: ignore[union-attr]
    healthcheck = json.loads(re.search(r"CMD (\[.+\])", runtime).group(1))  # type: ignore[union-attr]
    assert entrypoint[0] in SCRIPTS and healthcheck[0] in SCRIPTS
    assert "curl" not in DOCKERFILE.lower()
    assert re.search(r"^USER pusher$", runtime, re.M)
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", runtime, re.M).group(1).split()}  # type: ignore[union-attr]
    assert Settings.model_fields["api_port"].default in exposed
    assert MqttSettings.model_fields["connector_metrics_port"].default in exposed
    assert int(SERVICES["tracker"]["environment"]["TRACKER_METRICS_PORT"]) in exposed
    # every variable the image sets is read by the API or by a connector
    known = set(Settings.model_fields).union(*(s.model_fields for s in CONNECTOR_SETTINGS.values()))
    for name in re.findall(r"^\s+([A-Z_]+)=", runtime, re.M):
        assert name.lower() in known or name in NOT_SETTINGS | {
            "PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"
        }, name  # fmt: skip
    assert "-c constraints.txt" in DOCKERFILE
    # the OT-2 agent stage runs the agent script with options it accepts
    agent_stage = DOCKERFILE.split("AS ot2-agent")[1]
    agent_entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", agent_stage, re.M).group(1))  # type: ignore[union-attr]
    assert (ROOT / "firmware" / "ot2" / agent_entry[1]).exists()
    sys.path.insert(0, str(ROOT / "firmware" / "ot2"))
    import ot2_agent

    ot2_agent.build_parser().parse_args(agent_entry[2:])
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in dockerignore and ".venv" in dockerignore and ".env" in dockerignore


def test_prometheus_scrapes_every_pusher_service_on_its_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        name: (job.get("metrics_path", "/metrics"), sd["port"])
        for job in config["scrape_configs"]
        for sd in job["dns_sd_configs"]
        for name in sd["names"]
    }
    assert set(targets) == set(pusher_services())
    assert targets["api"] == ("/api/v1/metrics", 8000)
    assert targets["tracker"][1] == int(SERVICES["tracker"]["environment"]["TRACKER_METRICS_PORT"])
    for protocol in CONNECTOR_SETTINGS:
        port = SERVICES[f"connector-{protocol}"]["environment"]["CONNECTOR_METRICS_PORT"]
        assert targets[f"connector-{protocol}"][1] == int(port)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing (.ci/run installs it)"
)
def test_prometheus_config_passes_promtool() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def sample_names(exposition: str) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


@pytest.mark.integration
async def test_dashboard_queries_only_metrics_the_code_exports(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Every metric in the Grafana dashboard is in the real API or connector exposition."""
    base = make_settings(tracker_enabled=True)
    port = free_port()
    values = base.model_dump()
    values.update(
        connector_metrics_port=port,
        connector_metrics_host="127.0.0.1",
        connector_group_id=f"connector-{uuid.uuid4().hex[:8]}",
    )
    settings = HttpSettings(_env_file=None, **values)  # type: ignore[call-arg]
    async with serve(base) as api, running_connector(settings, HttpTransport(settings)):
        response = await api.client.post(
            "/api/v1/commands",
            json={"device_id": "d1", "command_type": "x", "protocol": "http", "payload": {}},
        )
        # the unregistered device fails it: an end-to-end latency to observe
        await wait_terminal(api, response.json()["request_id"])
        async with httpx.AsyncClient() as client, asyncio.timeout(20):
            while True:  # the connector's lag gauge appears with its first lag reading
                exported = sample_names((await api.client.get("/api/v1/metrics")).text)
                connector = await client.get(f"http://127.0.0.1:{port}/metrics")
                exported |= sample_names(connector.text)
                if "pusher_connector_partition_lag" in exported:
                    break
                await asyncio.sleep(0.2)
    queried = {
        name
        for panel in DASHBOARD["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bpusher_[a-z0-9_]+", target["expr"])
    }
    assert len(queried) >= 12
    missing = sorted(queried - exported)
    assert missing == [], f"dashboard queries metrics nobody exports: {missing}"
    assert {"pusher_connector_partition_lag", "pusher_command_end_to_end_seconds_bucket"} <= queried


@pytest.mark.integration
async def test_healthcheck_command_follows_the_api_health(make_settings: SettingsFactory) -> None:
    script = str(Path(sys.executable).parent / "pusher-healthcheck")
    async with serve(make_settings()) as api:
        ok = await asyncio.create_subprocess_exec(script, f"{api.base_url}/health/ready")
        assert await ok.wait() == 0
    down = await asyncio.create_subprocess_exec(
        script, f"http://127.0.0.1:{free_port()}/health", stdout=asyncio.subprocess.DEVNULL
    )
    assert await down.wait() == 1


def test_compose_mosquitto_acl_is_the_one_made_from_the_registry() -> None:
    """deploy/mosquitto/acl is `pusher mqtt-acl` of deploy/devices.yaml; the broker uses it."""
    from connectors.mqtt.acl import render_acl

    devices = parse_registry((ROOT / "deploy" / "devices.yaml").read_text(), ".yaml")
    user = default_of(SERVICES["mosquitto"]["environment"]["MQTT_USERNAME"])
    assert (ROOT / "deploy" / "mosquitto" / "acl").read_text() == render_acl(devices, "lab", user)
    config = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert "\nacl_file /mosquitto/config/acl" in config and "\nallow_anonymous false" in config
    assert "./deploy/mosquitto/acl:/mosquitto/config/acl:ro" in SERVICES["mosquitto"]["volumes"]


def test_each_connector_replica_has_its_own_connector_id_and_no_state_volume() -> None:
    """Instance state is named by CONNECTOR_ID, never the host name: every connector
    service sets its own, and none keeps a state volume (the journal is in Kafka)."""
    connectors = {n: s for n, s in pusher_services().items() if s["command"][0] == "connector"}
    ids = [service["environment"].get("CONNECTOR_ID") for service in connectors.values()]
    assert all(ids) and len(set(ids)) == len(ids), ids
    for name, service in connectors.items():
        assert "MQTT_SHARED_GROUP" not in service["environment"], name
        assert all("state" not in volume for volume in service.get("volumes", [])), name
