"""Open-loop load generator: POSTs commands on a fixed schedule, whatever the answers do.

Request ``i`` is due at ``start + i / rate``; it is sent then (or at once, if the generator
is behind), never held back by a slow answer, up to ``--max-inflight`` requests open at
once. It prints one JSON object: offered and achieved rates, answers by status, how far
behind schedule it fell, and its own CPU use, so a report can tell a saturated generator
from a saturated server. Run as its own process (``python bench/loadgen.py ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import Counter

import aiohttp


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def offer(
    url: str,
    rate: float,
    seconds: float,
    devices: list[str],
    max_inflight: int,
    request_timeout: float = 30.0,
) -> dict[str, object]:
    """Offer ``rate`` POSTs/s for ``seconds``; return what was achieved."""
    bodies = [
        json.dumps(
            {
                "device_id": device,
                "command_type": "control_led",
                "payload": {"pin": 25, "state": True},
                "protocol": "mqtt",
            }
        ).encode()
        for device in devices
    ]
    answers: Counter[str] = Counter()
    latencies: list[float] = []
    inflight = 0
    skipped = 0  # due while max_inflight requests were open: not sent
    worst_behind = 0.0
    late = 0  # sent more than 5 ms after their due time
    headers = {"Content-Type": "application/json"}
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=max_inflight, force_close=False)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(body: bytes) -> None:
            nonlocal inflight
            began = loop.time()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    answers[str(response.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                answers[type(exc).__name__] += 1
            finally:
                inflight -= 1
                latencies.append(loop.time() - began)

        total = int(rate * seconds)
        tasks: set[asyncio.Task[None]] = set()
        cpu_before = _cpu_seconds()
        start = loop.time() + 0.05
        for index in range(total):
            due = start + index / rate
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                behind = now - due
                worst_behind = max(worst_behind, behind)
                late += behind > 0.005
            if inflight >= max_inflight:
                skipped += 1
                continue
            inflight += 1
            task = asyncio.create_task(post(bodies[index % len(bodies)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        send_window = loop.time() - start
        cpu_sending = _cpu_seconds() - cpu_before
        if tasks:
            await asyncio.wait(tasks, timeout=request_timeout + 5)
    latencies.sort()

    def pct(share: float) -> float:
        return latencies[min(len(latencies) - 1, int(share * len(latencies)))] if latencies else 0

    sent = total - skipped
    return {
        "offered": rate,
        "seconds": seconds,
        "due": total,
        "sent": sent,
        "skipped": skipped,
        "achieved": sent / send_window if send_window > 0 else 0.0,
        "answers": dict(answers),
        "late": late,
        "worst_behind_ms": round(worst_behind * 1000, 1),
        "generator_cpu": round(cpu_sending / send_window, 3) if send_window > 0 else 0.0,
        "http_p50_ms": round(pct(0.5) * 1000, 2),
        "http_p99_ms": round(pct(0.99) * 1000, 2),
        "started_at": time.time() - (loop.time() - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--device", action="append", required=True)
    parser.add_argument("--max-inflight", type=int, default=256)
    args = parser.parse_args()
    result = asyncio.run(offer(args.url, args.rate, args.seconds, args.device, args.max_inflight))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
