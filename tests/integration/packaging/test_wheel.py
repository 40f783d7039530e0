"""What ships: the production wheel and image carry the service, never the dev tools."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def test_production_wheel_has_the_service_and_migrations_but_no_dev_tools(
    tmp_path: Path,
) -> None:
    """``pip wheel --no-deps .``: API, connectors, pusher command and Alembic revisions only."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )  # fmt: skip
    [wheel] = tmp_path.glob("preservarium_pusher-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"preservarium_pusher_api", "connectors", "pusher_cli"}
    assert not [n for n in names if re.search(r"pusher_dev|simulator|dev_stack|embedded_kafka", n)]
    assert "preservarium_pusher_api/store/migrations/env.py" in names
    assert "preservarium_pusher_api/store/migrations/versions/0001_initial.py" in names
    for asset in ("index.html", "app.js", "api.js", "stream.js", "style.css"):  # the dashboard
        assert f"preservarium_pusher_api/ui/static/{asset}" in names


def test_runtime_image_copies_no_dev_tools() -> None:
    """The runtime stage is built from the service packages; only the demo stage adds tools."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    build_and_runtime = dockerfile.split(" AS demo")[0]
    assert "devtools" not in build_and_runtime
    assert "COPY devtools" in dockerfile.split(" AS demo")[1].split(" AS ot2-agent")[0]
