"""The OpenAPI schema says what the API enforces: schemathesis, every check, auth on and off.

A bounded, reproducible run (fixed seed, fixed example count) against the live API on the
test broker, every route but the endless event stream; any failing check (a 5xx, a
response or status the schema does not describe, a schema-valid request refused, a
schema-invalid one accepted, a route open that the schema says needs a key) fails the test
with schemathesis' report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SettingsFactory, serve

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

API_KEY = "schemathesis-key-0123456789"


def schemathesis() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "schemathesis.cli"]


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
async def test_every_schemathesis_check_passes(
    make_settings: SettingsFactory, tmp_path: Path, auth: bool
) -> None:
    settings = make_settings(
        tracker_enabled=True,
        enable_auth=auth,
        api_keys=API_KEY if auth else "",
        long_poll_max_seconds=0.2,  # long-polls answer at once: the run stays short
    )
    async with serve(settings) as api:
        command = [
            *schemathesis(),
            "run",
            f"{api.base_url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "20261204",
            "--generation-deterministic",
            "--no-color",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            # a valid request opens an endless event stream; its validation and behaviour
            # are tested in test_event_stream.py
            "--exclude-path",
            "/api/v1/events",
        ]
        if auth:
            command += ["--header", f"X-API-Key: {API_KEY}"]
        process = await asyncio_run(command, tmp_path)
    assert process.returncode == 0, process.stdout[-12000:]


async def asyncio_run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode or 0, out.decode(errors="replace"))
