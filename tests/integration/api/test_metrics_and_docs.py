"""Prometheus exposition, its JSON digest, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveApi, command

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_commands_and_label_routes_by_template(api: LiveApi) -> None:
    """Counters move with traffic; HTTP metrics use route templates, unknown paths are grouped."""
    for _ in range(2):
        assert (await api.client.post("/api/v1/commands", json=command())).status_code == 202
    batch = {"commands": [command(protocol="http"), command(protocol="coap")]}
    assert (await api.client.post("/api/v1/commands/batch", json=batch)).status_code == 202
    assert (await api.client.post("/api/v1/commands", json={})).status_code == 422
    assert (await api.client.get("/no/such/path/123")).status_code == 404

    response = await api.client.get("/api/v1/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples[("pusher_commands_total", (("outcome", "accepted"), ("protocol", "mqtt")))] == 2
    assert samples[("pusher_commands_total", (("outcome", "accepted"), ("protocol", "http")))] == 1
    assert samples[("pusher_kafka_produce_duration_seconds_count", ())] == 4
    assert samples[("pusher_batch_size_commands_sum", ())] == 2
    assert samples[("pusher_kafka_connected", ())] == 1
    route = ("route", "/api/v1/commands")
    assert (
        samples[("pusher_http_requests_total", (("method", "POST"), route, ("status", "202")))] == 2
    )
    assert (
        samples[("pusher_http_requests_total", (("method", "POST"), route, ("status", "422")))] == 1
    )
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert samples[("pusher_http_requests_total", unmatched)] == 1
    assert not any("/no/such/path" in str(labels) for _, labels in samples)
    assert any(name == "pusher_build_info" for name, _ in samples)


async def test_metrics_pass_promtool(api: LiveApi) -> None:
    """The exposition passes `promtool check metrics` (installed by .ci/run)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (Debian package 'prometheus')")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    await api.client.post("/api/v1/commands", json=command())
    text = (await api.client.get("/api/v1/metrics")).text
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_metrics_json_digest(api: LiveApi) -> None:
    """With Accept: application/json the metrics come as a JSON digest."""
    await api.client.post("/api/v1/commands", json=command())
    response = await api.client.get("/api/v1/metrics", headers={"Accept": "application/json"})
    assert response.headers["content-type"] == "application/json"
    digest = response.json()
    [accepted] = digest["pusher_commands"]["samples"][:1]
    assert accepted["labels"] == {"protocol": "mqtt", "outcome": "accepted"}
    assert accepted["value"] == 1
    assert digest["pusher_kafka_connected"]["samples"][0]["value"] == 1


async def test_openapi_documents_routes_examples_and_errors(api: LiveApi) -> None:
    """OpenAPI lists the routes with request examples and the shared error schema."""
    spec = (await api.client.get("/openapi.json")).json()
    for path in (
        "/api/v1/commands",
        "/api/v1/commands/batch",
        "/health",
        "/health/ready",
        "/api/v1/status",
        "/api/v1/metrics",
    ):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert schemas["CommandRequest"]["examples"][0]["device_id"] == "pico-w-lab-001"
    assert set(schemas["ErrorResponse"]["properties"]) == {"error", "type", "details", "request_id"}
    post = spec["paths"]["/api/v1/commands"]["post"]
    assert {"202", "401", "413", "422", "429", "503"} <= set(post["responses"])
    docs = await api.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    """A setting added to a settings class without a README row fails here."""
    from pathlib import Path

    import connectors.settings as connector_settings
    from preservarium_pusher_api.config import Settings

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    classes = [Settings, *vars(connector_settings).values()]
    names = {
        name.upper()
        for cls in classes
        if isinstance(cls, type) and issubclass(cls, Settings)
        for name in cls.model_fields
    }
    assert len(names) > 40
    missing = sorted(name for name in names if f"`{name}`" not in table)
    assert missing == [], f"settings without a README row: {missing}"
