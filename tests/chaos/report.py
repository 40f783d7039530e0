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

Measured by `make chaos` (the command below), on {machine}, {date}, all rows from one run.
The MQTT scenarios run two API processes and two tracker processes (one consumer group)
sharing one PostgreSQL status store, three MQTT connector processes (one consumer group),
a private Mosquitto, the embedded Kafka-compatible broker, and 30 simulated Pico W boards
that remember **no** request id (every command they receive they run, and the test counts
each run; only in the Mosquitto restart do they keep the firmware's memory, see below).
The HTTP and CoAP scenarios run one API, one tracker and two connector replicas in front of
30 generic devices that remember nothing. Commands are submitted in batches (with an
Idempotency-Key, moving to the other API when one does not answer) while the fault is
injected, after a fifth of them ran.

- **duplicate executions**: runs of one request_id beyond the first, on the devices.
- **lost**: accepted commands that never reached a terminal status.
- **false terminals**: a command a device ran that did not end `succeeded`, or one that
  ended `succeeded` without running (HTTP/CoAP: a command that ran while its replica was
  being killed, whose answer died with it, is counted in the notes instead).
- **drain after fault**: seconds from the fault until every command was terminal.
- Every scenario also reads the sent-command journal: no connector handed any request_id
  to a device or broker twice ("connector sends beyond the first").

```
{command}
```

"""
TABLE = (
    "| scenario | accepted | terminal by status | duplicate executions | lost "
    "| false terminals | fault after (runs) | drain after fault (s) | notes |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|---|\n"
)

FINDINGS = """
## Reading the table

- `timed_out` after a connector SIGKILL: commands written to the journal whose send had not
  left the killed process. They are never sent again (the next owner reports them `sent`,
  "not sent again") and end at their deadline; none of them ran.
- **Mosquitto restart — not met (false terminals).** Across a broker restart two things
  end commands `timed_out`: publishes in flight when the broker went away (unconfirmed, so
  never re-sent; they did not run), and answers a board ran a command for but could not
  publish while the broker was down (the boards keep no outbox, so the answer is lost and
  the command, which ran, ends `timed_out` — the false terminals). QoS 1 from the broker
  to a board is at least once across the restart; the firmware's request-id memory absorbs
  the redeliveries ("broker redeliveries absorbed"). Next steps: an answer outbox in the
  firmware (publish unsent answers after reconnecting), and telling "delivered to the
  broker, answer lost" apart from "never delivered" in the status detail.
- One device offline: its commands were held (then parked) and ran in order once it was
  back; its partition-mates' p99 stayed with the other devices'. The `timed_out` commands
  of that row never ran; where each of them was lost (between the connector, the broker's
  queue for the board's session and the board going offline) is not established yet.
"""


def main(report: str, output: str) -> None:
    rows = [json.loads(line) for line in Path(report).read_text().splitlines() if line.strip()]
    text = HEADER.format(
        machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
        command="make chaos   # CHAOS_FULL=1 pytest tests/chaos; python -m tests.chaos.report",
    )
    text += TABLE
    for row in rows:
        terminal = ", ".join(f"{status} {count}" for status, count in row["terminal"].items())
        text += (
            f"| {row['scenario']} | {row['accepted']} | {terminal} | "
            f"{row['duplicate_executions']} | {row['lost']} | {row['false_terminals']} | "
            f"{row['fault_at_executed']} | {row['seconds_to_drain_after_fault']} | "
            f"{'; '.join(f'{key}: {value}' for key, value in row.get('notes', {}).items())} |\n"
        )
    text += FINDINGS
    Path(output).write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
