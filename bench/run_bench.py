"""Load benchmark: the API against a validate-only baseline and raw aiokafka, in one run.

Starts the embedded Kafka-compatible broker, the API (`pusher api`, one uvicorn worker,
production logging), the baseline app (same validation, no Kafka), then drives them with
wrk at 32 connections and writes docs/benchmarks.md. Run with `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pusher_dev.embedded_kafka import EmbeddedKafka, free_port

from preservarium_pusher_api import __version__

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMMAND = {
    "device_id": "pico-w-lab-001",
    "command_type": "control_led",
    "payload": {"pin": 25, "state": True},
    "protocol": "mqtt",
}
BATCH_SIZE = 500


@dataclass
class WrkResult:
    """What wrk measured for one target."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int


def _to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, body: str, connections: int, seconds: int) -> WrkResult:
    """POST ``body`` to ``url`` with wrk and parse its report."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
    report = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    return WrkResult(
        requests_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", report).group(1)),  # type: ignore[union-attr]
        p50_ms=_to_ms(re.search(r"\s50%\s+(\S+)", report).group(1)),  # type: ignore[union-attr]
        p99_ms=_to_ms(re.search(r"\s99%\s+(\S+)", report).group(1)),  # type: ignore[union-attr]
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        requests=int(re.search(r"(\d+) requests in", report).group(1)),  # type: ignore[union-attr]
    )


def wait_ready(url: str, timeout: float = 30) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


@contextmanager
def process(argv: list[str], env: dict[str, str], ready_url: str) -> Iterator[None]:
    """Run a server process until the block ends."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(ready_url)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def api_env(
    broker: EmbeddedKafka, port: int, log_level: str, store_dir: str | None = None
) -> dict[str, str]:
    """Environment of a `pusher api` process for the benchmark (store off without a dir)."""
    store = (
        {"STATUS_STORE_URL": f"sqlite:///{store_dir}/status.db"}
        if store_dir
        else {"STATUS_STORE_ENABLED": "false"}
    )
    return {
        **store,
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_COMMAND_TOPIC": f"bench-{port}",
        "API_PORT": str(port),
        "LOG_LEVEL": log_level,
        "MAX_BODY_BYTES": str(8 * 1024 * 1024),
    }


def measure(seconds: int, connections: int) -> dict[str, object]:
    """Run every scenario in one session and return the numbers."""
    single = json.dumps(COMMAND)
    batch = json.dumps({"commands": [COMMAND] * BATCH_SIZE})
    results: dict[str, object] = {}
    with EmbeddedKafka() as broker:
        port = free_port()
        baseline = [
            str(BIN / "uvicorn"),
            "--app-dir",
            "bench",
            "baseline_app:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        with process(baseline, dict(os.environ), f"http://127.0.0.1:{port}/docs"):
            url = f"http://127.0.0.1:{port}/api/v1/commands"
            run_wrk(url, single, connections, 2)
            results["baseline"] = run_wrk(url, single, connections, seconds)

        for store in ("off", "on"):
            port = free_port()
            with tempfile.TemporaryDirectory() as store_dir:
                env = api_env(broker, port, "INFO", store_dir if store == "on" else None)
                with process(
                    [str(BIN / "pusher"), "api"], env, f"http://127.0.0.1:{port}/health/ready"
                ):
                    url = f"http://127.0.0.1:{port}/api/v1/commands"
                    run_wrk(url, single, connections, 2)
                    results[f"api_store_{store}"] = run_wrk(url, single, connections, seconds)
                    if store == "on":
                        run_wrk(url + "/batch", batch, 4, 2)
                        results["api_batch"] = run_wrk(url + "/batch", batch, 4, seconds)

        raw = subprocess.run(
            [
                sys.executable,
                "bench/raw_producer.py",
                "--bootstrap",
                broker.bootstrap_servers,
                "--topic",
                "bench-raw",
                "--total",
                "100000",
                "--body",
                single,
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        results["raw_producer"] = json.loads(raw.stdout)["records_per_second"]
    return results


def render(results: dict[str, object], command_line: str, seconds: int, connections: int) -> str:
    """Markdown report of one run."""
    base = results["baseline"]
    api = results["api_store_on"]
    quiet = results["api_store_off"]
    batch = results["api_batch"]
    raw = results["raw_producer"]
    assert isinstance(base, WrkResult) and isinstance(api, WrkResult)
    assert isinstance(quiet, WrkResult) and isinstance(batch, WrkResult)
    assert isinstance(raw, float)
    batch_commands = batch.requests_per_second * BATCH_SIZE
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    if names:
        cpu = names[0]

    def row(name: str, r: WrkResult) -> str:
        return (
            f"| {name} | {r.requests_per_second:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.requests:,} | {r.non_2xx} |"
        )

    return f"""# Benchmarks

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, version {__version__}, Python
{platform.python_version()}, {os.cpu_count()} cores ({cpu}). Load generator: wrk, 2 threads,
on the same machine as the servers. Broker: the embedded Kafka-compatible broker (tansu,
in-memory), `acks=all`, idempotence off (the embedded broker lacks it). One uvicorn worker.

Reproduce with:

```bash
{command_line}
```

## Single command — `POST /api/v1/commands`, {connections} connections, {seconds} s

| target | req/s | p50 ms | p99 ms | requests | non-2xx |
|---|---:|---:|---:|---:|---:|
{row("validate-only baseline (FastAPI, same CommandRequest, no Kafka)", base)}
{row("API, produce + wait for ack + record `queued` (status store on, SQLite; default)", api)}
{row("API, produce + wait for ack, status store off", quiet)}

**Ratio API / baseline: {api.requests_per_second / base.requests_per_second:.2f}×**
(store off: {quiet.requests_per_second / base.requests_per_second:.2f}×); target ≥ 0.85×
with p99 ≤ 20 ms (measured p99 {api.p99_ms:.2f} ms).

**Status store cost: store on / store off = {api.requests_per_second / quiet.requests_per_second:.2f}×**
(target ≥ 0.90×). `queued` rows are written behind the 202, every 10 ms in one
transaction per group; the tracker runs in the API process in the store-on run.
LOG_LEVEL=INFO in both.

## Batch — `POST /api/v1/commands/batch`, {BATCH_SIZE} commands per request, 4 connections

| target | commands/s |
|---|---:|
| API batch ({batch.requests_per_second:,.1f} req/s, p99 {batch.p99_ms:.1f} ms, non-2xx {batch.non_2xx}) | {batch_commands:,.0f} |
| raw aiokafka producer, same records, fire-and-forget | {raw:,.0f} |

**Ratio API batch / raw producer: {batch_commands / raw:.2f}×**; target ≥ 0.6×.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    results = measure(args.seconds, args.connections)
    report = render(results, "make bench", args.seconds, args.connections)
    notes = ROOT / "bench" / "notes.md"
    if notes.exists():
        report += "\n" + notes.read_text()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
