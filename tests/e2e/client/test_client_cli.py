"""`pusher send|status|list|cancel|devices` as a shell user runs them, against the real stack."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import LedStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PUSHER = str(Path(sys.executable).parent / "pusher")


async def pusher(stack: LedStack, *argv: str, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        PUSHER,
        *argv,
        env={**os.environ, "PUSHER_URL": stack.api.base_url, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


SEND = ["send", "--device", "pico-c1", "--protocol", "mqtt"]


async def test_send_wait_succeeded_exits_0_with_the_result(led_stack: LedStack) -> None:
    code, out, err = await pusher(
        led_stack, *SEND, "--type", "control_led", "--payload", '{"pin": 25, "state": true}',
        "--wait", "20",
    )  # fmt: skip
    assert code == 0, err
    assert "succeeded" in out and 'result: "LED on pin 25 ON"' in out
    assert "queued → sent → delivered → succeeded" in out


async def test_send_json_for_scripts_and_failure_exit_1_with_reason(led_stack: LedStack) -> None:
    code, out, err = await pusher(led_stack, *SEND, "--type", "dance", "--wait", "20", "--json")
    assert code == 1, err
    body = json.loads(out)
    assert body["status"] == "failed" and body["detail"] == "Task 'dance' not found"
    led = ["--type", "control_led", "--payload", '{"pin": 2, "state": false}']
    code, out, _ = await pusher(led_stack, *SEND, *led, "--json")
    assert code == 0
    request_id = json.loads(out)["request_id"]
    code, out, _ = await pusher(led_stack, "status", request_id, "--watch", "--timeout", "20")
    assert code == 0 and "succeeded" in out
    code, out, _ = await pusher(led_stack, "list", "--device", "pico-c1")
    assert code == 0 and request_id in out and out.splitlines()[0].startswith("REQUEST_ID")
    code, out, _ = await pusher(led_stack, "devices", "--json")
    assert code == 0 and "pico-c1" in [d["device_id"] for d in json.loads(out)["items"]]


async def test_usage_rejected_unavailable_and_still_running_exit_codes(led_stack: LedStack) -> None:
    code, _, err = await pusher(led_stack, *SEND, "--type", "x", "--payload", "[1]")
    assert code == 2 and "must be a JSON object" in err
    code, _, err = await pusher(led_stack, "send", "--device", "bad/id", "--type", "x",
                                "--protocol", "mqtt")  # fmt: skip
    assert code == 3 and "rejected" in err and "device_id" in err
    code, _, err = await pusher(led_stack, "status", "00000000-0000-4000-8000-000000000000")
    assert code == 3 and "no command" in err
    silent = ["send", "--device", "pico-silent", "--type", "x", "--protocol", "mqtt"]
    code, _, err = await pusher(led_stack, *silent, "--timeout", "30", "--wait", "0.5")
    assert code == 6 and "still" in err
    code, _, err = await pusher(led_stack, "devices", PUSHER_URL="http://127.0.0.1:9")
    assert code == 5 and "unavailable" in err


async def test_cancel_a_command_waiting_behind_an_unanswered_one(led_stack: LedStack) -> None:
    nobody = ["send", "--device", "pico-nobody", "--type", "control_led", "--protocol", "mqtt"]
    on_result = ["--metadata", '{"dispatch": "on_result"}', "--timeout", "30", "--json"]
    code, _, err = await pusher(led_stack, *nobody, *on_result)
    assert code == 0, err
    code, out, err = await pusher(led_stack, *nobody, "--json")
    waiting = json.loads(out)["request_id"]
    code, out, err = await pusher(led_stack, "cancel", waiting)
    assert code == 0, err
    assert out.startswith(f"{waiting}: Cancel requested")
    code, out, _ = await pusher(led_stack, "status", waiting, "--watch", "--timeout", "20")
    assert code == 1 and "cancelled" in out
