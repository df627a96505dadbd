"""A consumer process for the broker crash and restart tests.

    python event_consumer.py URL TOPIC QUEUE MODE [MAX_IN_FLIGHT]

Prints `ready` once subscribed, then one JSON line per delivery: {"id", "attempt", "body"}.
MODE `hold`: never finishes a handler, so every event it takes stays unacked (the test then
SIGKILLs it); MODE `ack`: acknowledges each event (auto ack). Flushes every line, so a test
reading the log sees each delivery before the process dies.
"""

from __future__ import annotations

import asyncio
import json
import sys

from microweave import Client
from microweave._backends import load_broker
from microweave.broker import Event


async def main(url: str, topic: str, queue: str, mode: str, max_in_flight: int) -> None:
    client = Client(registry="memory://", name="event-consumer")
    broker = load_broker(url)
    broker.bind(client)
    forever = asyncio.Event()

    async def handle(event: Event) -> None:
        line = {"id": event.id, "attempt": event.attempt, "body": event.body.decode(errors="replace")}
        print(json.dumps(line), flush=True)
        if mode == "hold":
            await forever.wait()

    await broker.connect()
    await broker.subscribe(topic, handle, queue=queue, max_in_flight=max_in_flight)
    print("ready", flush=True)
    await forever.wait()


if __name__ == "__main__":
    url, topic, queue, mode = sys.argv[1:5]
    in_flight = int(sys.argv[5]) if len(sys.argv) > 5 else 64
    asyncio.run(main(url, topic, queue, mode, in_flight))
