"""Write docs/reliability.md from the figures the chaos scenarios appended (JSON lines).

``make chaos`` runs ``CHAOS_FULL=1 pytest tests/chaos`` with ``CHAOS_REPORT`` set, then
``python -m tests.chaos.report REPORT docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

HEADER = """# Reliability: replicas under faults

Measured by `make chaos` (the command below), on {machine}, {date}. Each scenario runs
against two API instances (each with its tracker) sharing one PostgreSQL status store, three
MQTT connector processes (one consumer group), Mosquitto, the embedded Kafka-compatible
broker, and {devices} simulated Pico W boards that remember **no** request id: every command
they receive they run, and the test counts each run. Commands are submitted in batches
through both APIs while the fault is injected, after a fifth of them ran.

- **duplicate executions**: runs of one request_id beyond the first, on the devices.
- **lost**: accepted commands that never reached a terminal status.
- **false terminals**: a command a device ran that did not end `succeeded`, or one that
  ended `succeeded` without running.
- **drain after fault**: seconds from the fault until every command was terminal.

```
{command}
```

"""
TABLE = (
    "| scenario | accepted | terminal by status | duplicate executions | lost "
    "| false terminals | fault after (runs) | drain after fault (s) |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|\n"
)


def main(report: str, output: str) -> None:
    rows = [json.loads(line) for line in Path(report).read_text().splitlines() if line.strip()]
    text = HEADER.format(
        machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
        devices=30,
        command="make chaos   # CHAOS_FULL=1 pytest tests/chaos; python -m tests.chaos.report",
    )
    text += TABLE
    for row in rows:
        terminal = ", ".join(f"{status} {count}" for status, count in row["terminal"].items())
        text += (
            f"| {row['scenario']} | {row['accepted']} | {terminal} | "
            f"{row['duplicate_executions']} | {row['lost']} | {row['false_terminals']} | "
            f"{row['fault_at_executed']} | {row['seconds_to_drain_after_fault']} |\n"
        )
    Path(output).write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
