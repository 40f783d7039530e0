"""Raw aiokafka, fire-and-forget: the ceiling for producing the API's records from Python."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from aiokafka import AIOKafkaProducer

from preservarium_pusher_api.core.contract import command_headers
from preservarium_pusher_api.models import CommandRequest
from preservarium_pusher_api.services.producer import build_message


async def produce(bootstrap: str, topic: str, total: int, body: dict[str, object]) -> float:
    """Produce ``total`` command records without awaiting each ack; return records/s."""
    request = CommandRequest.model_validate(body)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=1
    )
    await producer.start()
    try:
        started = time.perf_counter()
        futures = []
        for _ in range(total):
            message = build_message(request, str(uuid.uuid4()))
            futures.append(
                await producer.send(
                    topic,
                    message.model_dump_json().encode(),
                    key=message.device_id.encode(),
                    headers=command_headers(message),
                )
            )
        await producer.flush()
        await asyncio.gather(*futures)
        return total / (time.perf_counter() - started)
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--total", type=int, default=100_000)
    parser.add_argument("--body", required=True, help="one command as JSON")
    args = parser.parse_args()
    rate = asyncio.run(produce(args.bootstrap, args.topic, args.total, json.loads(args.body)))
    print(json.dumps({"records_per_second": rate}))


if __name__ == "__main__":
    main()
