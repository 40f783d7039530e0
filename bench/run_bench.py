"""Load benchmark: the API against a validate-only baseline and raw aiokafka, in one run.

Starts the embedded Kafka-compatible broker, the API (`pusher api`: store off, store on,
auth and rate limit on, two workers), the baseline app (same validation, no Kafka), drives
each with wrk at 32 connections (single) and 4 (batch of 500), samples the API's RSS, and
writes the head of docs/benchmarks.md (the other bench scripts add their sections). Run
with `make bench`.
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pusher_dev.embedded_kafka import EmbeddedKafka, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from charts import save

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


def run_wrk(
    url: str, body: str, connections: int, seconds: int, headers: dict[str, str] | None = None
) -> WrkResult:
    """POST ``body`` to ``url`` with wrk and parse its report (wrk's own -d bounds it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
        lines += [
            f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items()
        ]
        script.write("\n".join(lines) + f"\nwrk.body = {json.dumps(body)}\n")
    report = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
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


def wait_ready(url: str, timeout: float = 60) -> None:
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


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (uvicorn workers), from /proc."""
    total = 0
    for candidate in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{candidate}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(child) for child in listing.read().split()]
    except OSError:
        return []


class Peak:
    """Samples a process tree's RSS every 0.2 s in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(0.2)


LOGS = ROOT / ".bench" / "logs"


@contextmanager
def process(argv: list[str], env: dict[str, str], ready_url: str, name: str) -> Iterator[int]:
    """Run a server process until the block ends; yields its pid. Stopped with SIGTERM,
    killed if it has not ended within 30 s. Its output is kept in .bench/logs/NAME.log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / f"{name}.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(ready_url)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"{argv[0]} did not stop within 30 s; killed", file=sys.stderr)
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def api_env(
    broker: EmbeddedKafka, port: int, store_dir: str | None = None, **extra: str
) -> dict[str, str]:
    """Environment of a `pusher api` process for the benchmark (store off without a dir)."""
    store = (
        {"STATUS_STORE_URL": f"sqlite:///{store_dir}/status.db"}
        if store_dir
        else {"STATUS_STORE_ENABLED": "false"}
    )
    return {
        **os.environ,
        **store,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_COMMAND_TOPIC": f"bench-{port}",
        "KAFKA_RESULT_TOPIC": f"bench-{port}-results",
        "KAFKA_PRESENCE_TOPIC": f"bench-{port}-presence",
        "KAFKA_CONSUMER_REBALANCE_TIMEOUT_MS": "300",
        "TRACKER_GROUP_ID": f"bench-tracker-{port}",  # scenarios never share a group
        "API_PORT": str(port),
        "LOG_LEVEL": "INFO",
        "MAX_BODY_BYTES": str(8 * 1024 * 1024),
        "RATE_LIMIT": "",
        "ENABLE_AUTH": "false",
        **extra,
    }


BENCH_KEY = "bench-key-0123456789abcdef"


def measure(seconds: int, connections: int, only: str | None = None) -> dict[str, Any]:
    """Run every scenario in one session and return the numbers (``only``: the baseline
    and that one scenario, printed, for looking into one row)."""
    single = json.dumps(COMMAND)
    batch = json.dumps({"commands": [COMMAND] * BATCH_SIZE})
    results: dict[str, Any] = {}
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
        with process(baseline, dict(os.environ), f"http://127.0.0.1:{port}/docs", "baseline"):
            url = f"http://127.0.0.1:{port}/api/v1/commands"
            run_wrk(url, single, connections, 2)
            results["baseline"] = run_wrk(url, single, connections, seconds)
        print(f"  baseline: {results['baseline']}", file=sys.stderr)

        scenarios: list[tuple[str, bool, list[str], dict[str, str], dict[str, str]]] = [
            ("api_store_off", False, [], {}, {}),
            ("api_store_on", True, [], {}, {}),
            (
                "api_auth_limits",
                True,
                [],
                {"ENABLE_AUTH": "true", "API_KEYS": BENCH_KEY, "RATE_LIMIT": "1000000/minute"},
                {"X-API-Key": BENCH_KEY},
            ),
            ("api_workers_2", True, ["--workers", "2"], {}, {}),
        ]
        for name, store_on, args, extra, headers in scenarios:
            if only is not None and name != only:
                continue
            port = free_port()
            with tempfile.TemporaryDirectory() as store_dir:
                env = api_env(broker, port, store_dir if store_on else None, **extra)
                argv = [str(BIN / "pusher"), "api", *args]
                ready = f"http://127.0.0.1:{port}/health/ready"
                with process(argv, env, ready, name) as pid:
                    url = f"http://127.0.0.1:{port}/api/v1/commands"
                    run_wrk(url, single, connections, 2, headers)
                    with Peak(pid) as memory:
                        results[name] = run_wrk(url, single, connections, seconds, headers)
                    results[f"{name}_rss"] = memory.peak
                    if name == "api_store_on":
                        run_wrk(url + "/batch", batch, 4, 2)
                        with Peak(pid) as memory:
                            results["api_batch"] = run_wrk(url + "/batch", batch, 4, seconds)
                        results["api_batch_rss"] = memory.peak
            print(f"  {name}: {results[name]}", file=sys.stderr)
        if only is not None:
            return results

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
            timeout=300,
        )
        results["raw_producer"] = json.loads(raw.stdout)["records_per_second"]
    results["batch_commands_per_second"] = results["api_batch"].requests_per_second * BATCH_SIZE
    save(
        "api",
        {k: (asdict(v) if isinstance(v, WrkResult) else v) for k, v in results.items()},
    )
    return results


def verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def render(results: dict[str, Any], command_line: str, seconds: int, connections: int) -> str:
    """Markdown report of one run."""
    base: WrkResult = results["baseline"]
    api: WrkResult = results["api_store_on"]
    quiet: WrkResult = results["api_store_off"]
    guarded: WrkResult = results["api_auth_limits"]
    workers: WrkResult = results["api_workers_2"]
    batch: WrkResult = results["api_batch"]
    raw: float = results["raw_producer"]
    batch_commands: float = results["batch_commands_per_second"]
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    if names:
        cpu = names[0]
    mib = 1024 * 1024

    def row(name: str, r: WrkResult) -> str:
        return (
            f"| {name} | {r.requests_per_second:,.0f} | {r.requests_per_second / base.requests_per_second:.2f}× "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.requests:,} | {r.non_2xx} |"
        )

    single_ratio = api.requests_per_second / base.requests_per_second
    store_ratio = api.requests_per_second / quiet.requests_per_second
    worker_ratio = workers.requests_per_second / api.requests_per_second
    batch_ratio = batch_commands / raw
    rss = max(results["api_store_on_rss"], results["api_batch_rss"]) / mib

    return f"""# Benchmarks

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, version {__version__}, Python
{platform.python_version()}, {os.cpu_count()} cores ({cpu}); every server, broker and load
generator on the same machine. Broker: the embedded Kafka-compatible broker (tansu,
in-memory), `acks=all`, idempotence off (the embedded broker lacks it). Every ratio below
is between two numbers of the same run.

Reproduce with (a fresh clone needs nothing else; it installs wrk and starts PostgreSQL
when missing, and takes about 5 minutes):

```bash
{command_line}
```

![Throughput against each baseline](bench-throughput.png)

## Summary

| figure | measured | target | |
|---|---:|---:|---|
| P1 single `POST /api/v1/commands` / validate-only FastAPI baseline (store on) | {single_ratio:.2f}× | ≥ 0.85× | {verdict(single_ratio >= 0.85)} |
| P1 p99 (store on) | {api.p99_ms:.1f} ms | ≤ 20 ms | {verdict(api.p99_ms <= 20)} |
| store on / store off | {store_ratio:.2f}× | ≥ 0.95× | {verdict(store_ratio >= 0.95)} |
| auth + rate limit on / off | {guarded.requests_per_second / api.requests_per_second:.2f}× | — | |
| P2 batch commands/s / raw aiokafka producer | {batch_ratio:.2f}× | ≥ 1.0× | {verdict(batch_ratio >= 1.0)} |
| API peak RSS under load (single and batch) | {rss:.0f} MB | ≤ 150 MB | {verdict(rss <= 150)} |
| 2 workers / 1 worker | {worker_ratio:.2f}× | ≥ 1.6× | {verdict(worker_ratio >= 1.6)} |

P3 (end to end, the knee), P4 (connectors) and the tracker are in their sections below.

## P1 single command — `POST /api/v1/commands`, {connections} connections, {seconds} s, wrk

| target | req/s | / baseline | p50 ms | p99 ms | requests | non-2xx |
|---|---:|---:|---:|---:|---:|---:|
{row("validate-only baseline (FastAPI, same CommandRequest, no Kafka)", base)}
{row("API, status store off", quiet)}
{row("API, status store on (SQLite, tracker in the process; default)", api)}
{row("API, store on, auth + rate limit on (`ENABLE_AUTH`, `RATE_LIMIT=1000000/minute`)", guarded)}
{row("API, store on, `pusher api --workers 2`", workers)}

The API answers 202 only after the broker acknowledged the record (`acks=all`); it writes
nothing to the status store on the request path: the tracker records each command from
the commands topic, and the instance answers for what it accepted from memory until then.
LOG_LEVEL=INFO (one line per accepted command). Peak RSS of the API process: store on
{results["api_store_on_rss"] / mib:.0f} MB, store off {results["api_store_off_rss"] / mib:.0f} MB, 2 workers (both) {results["api_workers_2_rss"] / mib:.0f} MB.

## P2 batch — `POST /api/v1/commands/batch`, {BATCH_SIZE} commands per request, 4 connections

| target | commands/s |
|---|---:|
| API batch, store on ({batch.requests_per_second:,.1f} req/s, p99 {batch.p99_ms:.1f} ms, non-2xx {batch.non_2xx}) | {batch_commands:,.0f} |
| raw aiokafka producer loop, same records (`build_message` + `send` each, fire-and-forget) | {raw:,.0f} |

**Ratio API batch / raw producer: {batch_ratio:.2f}×** (target ≥ 1.0×). The API validates the
request, produces in bulk (one record batch per partition), waits for every
acknowledgement and answers each item with its partition and offset; the raw loop does
none of the HTTP work and waits for nothing but the final flush.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--only", help="run the baseline and this scenario, print, write nothing")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk (make bench installs it)")
    results = measure(args.seconds, args.connections, args.only)
    if args.only:
        return
    report = render(results, "make bench", args.seconds, args.connections)
    notes = ROOT / "bench" / "notes.md"
    if notes.exists():
        report += "\n" + notes.read_text()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
