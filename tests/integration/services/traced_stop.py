"""A service that stops but whose process lingers: `python traced_stop.py`.

Starts `lingering`, calls it once, stops it, prints "stopped", then waits two minutes without
exiting: spans that reach a collector meanwhile were flushed by `Service.stop`, not at exit.
Tracing comes from the environment.
"""

from __future__ import annotations

import asyncio

import msgspec

from microweave import Client, Service


class Ping(msgspec.Struct):
    text: str = ""


class Echo:
    async def ping(self, req: Ping) -> Ping:
        return req


async def main() -> None:
    service = Service("lingering", drain_delay=0, grace=2)
    service.handler(Echo)
    async with service, Client(transports=("tcp",), timeout=10) as client:
        await client.call("lingering", "Echo.Ping", Ping(text="x"), response=Ping)
    print("stopped", flush=True)
    await asyncio.sleep(120)


if __name__ == "__main__":
    asyncio.run(main())
