"""Call the greeter through a typed proxy: the handler class's own names and types.

    microweave run examples/greeter/service.py          # in one terminal
    python examples/greeter/proxy_client.py Ada         # in another

`client.proxy(Greeter, ...)` is typed as `Greeter`, so mypy --strict checks each call against
the handler's signature (a test runs mypy on this file).
"""

from __future__ import annotations

import asyncio
import sys

from service import Greeter, HelloReply, HelloRequest

from microweave import Client


async def main(name: str) -> None:
    async with Client() as client:
        greeter = client.proxy(Greeter, service="greeter", timeout=5.0)
        reply: HelloReply = await greeter.say_hello(HelloRequest(name=name))
        print(reply.message)
        async for item in greeter.say_hello_stream(HelloRequest(name=name[:2])):
            print(item.message)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "proxy"))
